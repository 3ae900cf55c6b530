"""The reaper: declares silent workers dead, takes their jobs back, and finishes what a crash left.

Runs on a tornado PeriodicCallback in every API process; each step is a conditional update, so
several processes reaping at once do each thing once.
"""

from __future__ import annotations

import logging
import time

from broadway import metrics
from broadway.config import Config
from broadway.models import Job, Worker
from broadway.scheduler import Scheduler
from broadway.store import Store, is_store_failure
from broadway.store.jobs import Reaped

log = logging.getLogger(__name__)

# A full sweep of running runs (to recover from crashes) every this many reaper ticks.
RECOVERY_EVERY_TICKS = 20

# A stage that names no `timeout` runs this long at most on a grader (the grader's default
# --timeout): the deadline of a legacy grader's job counts it for such stages.
DEFAULT_STAGE_TIMEOUT_S = 30.0


def job_deadline_s(job: Job, worker_timeout: float) -> float:
    """How long a grader that sends no heartbeat while it works may take over a job: every
    stage's timeout (the grader's default where it names none), plus one worker timeout."""
    total = 0.0
    for stage in job.stages:
        timeout = stage.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and 0 < timeout < float("inf"):
            total += float(timeout)
        else:
            total += DEFAULT_STAGE_TIMEOUT_S
    return total + worker_timeout


def worker_label(worker: Worker) -> str:
    """How logs name a worker: its name and a digest prefix, never its id (a credential)."""
    return f"{worker.name or '?'} ({worker.ref[:8]})"


class Reaper:
    def __init__(self, config: Config, store: Store, scheduler: Scheduler) -> None:
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.ticks = 0
        self._busy = False
        self._recovery_sweeps = 0
        # Run id -> when the recovery sweep last recounted it exactly.
        self._recounted: dict[str, float] = {}

    async def tick(self) -> None:
        """One sweep; skipped if the previous one is still going (a slow store must not pile them up)."""
        if self._busy:
            return
        self._busy = True
        try:
            if self.ticks == 0:
                # Workers recorded by a version without leases would never be reaped.
                await self.store.workers.lease_unleased(self._timeout)
            await self.reap_dead_workers()
            if self.ticks % RECOVERY_EVERY_TICKS == 0:
                await self.advance_running_runs()
            self.ticks += 1
        except Exception as e:
            if is_store_failure(e):
                log.warning("reaper: store unavailable: %s", e)
            else:
                log.exception("reaper sweep failed")
        finally:
            self._busy = False

    async def reap_dead_workers(self) -> None:
        now = time.time()
        for worker in await self.store.workers.stale(now):
            reason = f"worker {worker_label(worker)} missed heartbeats for {self.config.effective_worker_timeout:g}s"
            if worker.legacy and worker.lease_until and worker.lease_until > worker.last_seen + self._timeout:
                reason = f"worker {worker_label(worker)} was silent past its job's deadline"
            # Jobs first, then the worker: a crash in between leaves the worker stale, so the
            # next sweep takes it again, rather than a dead worker still holding jobs.
            reaped = await self.store.jobs.reap_worker(
                worker.ref, self.config.max_attempts, reason, callback_max_age_s=self.config.callback_max_age_s
            )
            if not await self.store.workers.mark_dead(worker.ref, now):
                continue
            log.warning(
                "%s: declared dead; %d job(s) requeued, %d failed",
                reason, len(reaped.requeued), len(reaped.failed),
            )  # fmt: skip
            await self._after_reaping(reaped)

    async def hold_for_job(self, worker: Worker, job: Job) -> None:
        """A legacy grader has just claimed `job`. It sends no heartbeat until it reports, so it
        is not declared dead before the job's own deadline (measured from now, the claim)."""
        await self.store.workers.hold_lease_until(worker.ref, time.time() + job_deadline_s(job, self._timeout))

    async def revive(self, worker: Worker) -> Worker | None:
        """A worker declared dead is heard from again (the 2018 grader never registers again: it
        would spin on 404). It comes back alive, holding no job: the reaper took them all
        before declaring it dead. None if it is unknown."""
        revived = await self.store.workers.revive(worker.ref, self._timeout)
        if revived is None:  # revived meanwhile by another request
            return await self.store.workers.get_alive(worker.ref)
        log.warning("worker %s was declared dead and is back: alive again, holding no job", worker_label(worker))
        return revived

    @property
    def _timeout(self) -> float:
        return self.config.effective_worker_timeout

    async def reconcile(self, worker: Worker, running: frozenset[str]) -> None:
        """A live worker says which jobs it runs: the others it holds were lost on the way to it
        (the poll's answer never arrived: the API was killed after the claim, or the connection
        dropped). Without this they would stay `running` for as long as it heartbeats."""
        grace = 2.0 * self.config.heartbeat_interval
        reason = f"worker {worker_label(worker)} never received the job"
        reaped = await self.store.jobs.reap_worker(
            worker.ref,
            self.config.max_attempts,
            reason,
            keep=running,
            claimed_before=time.time() - grace,
            callback_max_age_s=self.config.callback_max_age_s,
        )
        if reaped.requeued or reaped.failed:
            log.warning("%s: %d job(s) requeued, %d failed", reason, len(reaped.requeued), len(reaped.failed))
            await self._after_reaping(reaped)

    async def _after_reaping(self, reaped: Reaped) -> None:
        metrics.jobs_requeued(len(reaped.requeued))
        if reaped.requeued:
            self.scheduler.on_jobs_queued()
        for job in reaped.failed:
            await self.scheduler.job_finished(job)

    async def advance_running_runs(self) -> None:
        """Finish what a crash left half done (a lost progress increment, a queue step cut short).

        advance() recounts a run's jobs exactly: ~0.4 s of the store for 100,000 students, during
        which heartbeats wait. So only the first sweep of a process recounts every running run
        (it is how a restarted API picks up where a crashed one stopped); later sweeps recount a
        run only when its counter says it may be done or it has made no progress for a while,
        and each such run at most once per RECOUNT_EVERY (another API process may have crashed).
        """
        everything = self._recovery_sweeps == 0
        self._recovery_sweeps += 1
        now = time.time()
        quiet = max(5.0, 2 * self._timeout)
        every = max(10.0, 2 * self._timeout)
        for run in await self.store.runs.running_progress():
            maybe_done = run.students_done >= run.n_students
            stalled = now - run.last_progress > quiet
            recounted_lately = now - self._recounted.get(run.run_id, 0.0) < every
            if everything or ((maybe_done or stalled) and not recounted_lately):
                self._recounted[run.run_id] = now
                await self.scheduler.advance(run.run_id)
        self._recounted = {run_id: at for run_id, at in self._recounted.items() if now - at < every}
