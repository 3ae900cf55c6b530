"""The reaper: declares silent workers dead, takes their jobs back, and finishes what a crash left.

Runs on a tornado PeriodicCallback in every API process; each step is a conditional update, so
several processes reaping at once do each thing once.
"""

from __future__ import annotations

import logging
import time

from bson import ObjectId

from broadway.config import Config
from broadway.models import Worker
from broadway.scheduler import Scheduler
from broadway.store import Store, StoreUnavailable
from broadway.store.jobs import Reaped

log = logging.getLogger(__name__)

# A full sweep of running runs (to recover from crashes) every this many reaper ticks.
RECOVERY_EVERY_TICKS = 20


class Reaper:
    def __init__(self, config: Config, store: Store, scheduler: Scheduler) -> None:
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.ticks = 0
        self._busy = False

    async def tick(self) -> None:
        """One sweep; skipped if the previous one is still going (a slow store must not pile them up)."""
        if self._busy:
            return
        self._busy = True
        try:
            await self.reap_dead_workers()
            if self.ticks % RECOVERY_EVERY_TICKS == 0:
                await self.advance_running_runs()
            self.ticks += 1
        except StoreUnavailable as e:
            log.warning("reaper: store unavailable: %s", e)
        except Exception:
            log.exception("reaper sweep failed")
        finally:
            self._busy = False

    async def reap_dead_workers(self) -> None:
        timeout = self.config.effective_worker_timeout
        cutoff = time.time() - timeout
        for worker in await self.store.workers.stale(cutoff):
            reason = f"worker {worker.name or '?'} ({worker.ref[:8]}) missed heartbeats for {timeout:g}s"
            # Jobs first, then the worker: a crash in between leaves the worker stale, so the
            # next sweep takes it again, rather than a dead worker still holding jobs.
            reaped = await self.store.jobs.reap_worker(worker.ref, self.config.max_attempts, reason)
            if not await self.store.workers.mark_dead(worker.ref, cutoff):
                continue
            log.warning(
                "%s: declared dead; %d job(s) requeued, %d failed",
                reason, len(reaped.requeued), len(reaped.failed),
            )  # fmt: skip
            await self._after_reaping(reaped)

    async def reconcile(self, worker: Worker, running: frozenset[str]) -> None:
        """A live worker says which jobs it runs: the others it holds were lost on the way to it
        (the poll's answer never arrived: the API was killed after the claim, or the connection
        dropped). Without this they would stay `running` for as long as it heartbeats."""
        grace = 2.0 * self.config.heartbeat_interval
        reason = f"worker {worker.name or '?'} ({worker.ref[:8]}) never received the job"
        reaped = await self.store.jobs.reap_worker(
            worker.ref, self.config.max_attempts, reason, keep=running, claimed_before=time.time() - grace
        )
        if reaped.requeued or reaped.failed:
            log.warning("%s: %d job(s) requeued, %d failed", reason, len(reaped.requeued), len(reaped.failed))
            await self._after_reaping(reaped)

    async def _after_reaping(self, reaped: Reaped) -> None:
        if reaped.requeued:
            self.scheduler.on_jobs_queued()
        for job in reaped.failed:
            await self.scheduler.job_finished(job)

    async def advance_running_runs(self) -> None:
        for run_id in await self.store.runs.running_ids():
            await self.scheduler.advance(ObjectId(run_id))
