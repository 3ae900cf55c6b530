"""Run lifecycle: submission, start, and advancing pre -> students -> post -> finished.

`advance` is the one place that moves a run forward. It reads what the store says and makes
the next conditional update, so calling it twice, from two API processes, or after a crash
half-way is harmless; the liveness sweep calls it for every running run to finish what a
crashed API left half done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from broadway.callbacks.targets import CallbackTargetError, TargetPolicy, check_callback_url
from broadway.courses import Owner
from broadway.models import Job, JobKind, JobStatus, Run, RunStatus
from broadway.run_progress import RunProgress
from broadway.run_status_parts import RunStatusParts, fixed_part
from broadway.store import Store
from broadway.store.ids import new_id_text
from broadway.validation import NO_CEILINGS, RunPlan, StageCeilings, SubmissionError, plan_run

log = logging.getLogger(__name__)


def prepare_run(config: Any, ceilings: StageCeilings = NO_CEILINGS) -> RunPlan:
    """Validate a run config and plan every job with fresh ids. Pure CPU: run it off the event loop."""
    return plan_run(config, new_id_text(), new_id_text, ceilings)


class Scheduler:
    def __init__(
        self,
        store: Store,
        on_jobs_queued: Callable[[], None],
        ceilings: StageCeilings = NO_CEILINGS,
        callback_policy: TargetPolicy | None = None,
        callback_max_age_s: float = 24 * 3600.0,
    ) -> None:
        self.store = store
        self.progress = RunProgress(store.runs.count_student_done)
        # Each run's students' fixed status fields, encoded (GET of a whole run's status).
        self.status_parts = RunStatusParts()
        self.ceilings = ceilings
        # Wakes long-polling graders in this process (see dispatch.JobSignal).
        self.on_jobs_queued = on_jobs_queued
        self.callback_policy = callback_policy or TargetPolicy.from_strings(())
        self.callback_max_age_s = callback_max_age_s
        # Wakes this process's callback deliverer after a pending delivery was recorded; the
        # server points it at Deliverer.notify once the deliverer runs.
        self.on_callback_due: Callable[[], None] = lambda: None

    async def submit(self, config: Any, owner: Owner | None = None) -> Run:
        """Store a new run (status `created`) with all its jobs, owned by `owner` (the default
        course when None); raises SubmissionError."""
        callback_url = config.get("callback_url") if isinstance(config, dict) else None
        if callback_url is not None:
            try:
                check_callback_url(callback_url, self.callback_policy)
            except CallbackTargetError as e:
                raise SubmissionError(f"$.callback_url: {e}") from None
        plan = await asyncio.to_thread(prepare_run, config, self.ceilings)
        # Jobs first, run last: a crash in between leaves only unreachable jobs, never a run
        # with some of its jobs missing.
        await self.store.jobs.insert_plan(plan, (owner or Owner()).course)
        run = await self.store.runs.insert(
            plan.run_id, plan.n_students, plan.pre_job_id, plan.post_job_id, callback_url, owner
        )
        self.status_parts.put(run.id, await asyncio.to_thread(students_fixed_parts, plan))
        log.info("run %s submitted: %d students", run.id, run.n_students)
        return run

    async def start(self, run_id: str) -> Run | None:
        """created -> running, and queue the first jobs. None if the run is not `created`."""
        run = await self.store.runs.mark_started(run_id)
        if run is None:
            return None
        log.info("run %s started", run.id)
        await self.advance(run_id)
        return run

    async def advance(self, run_id: str) -> None:
        """Make the next move of a running run, if one is due."""
        run = await self.store.runs.get(run_id)
        if run is None or run.status is not RunStatus.RUNNING:
            return
        if run.pre_job_id:
            pre = await self.store.jobs.get(run.pre_job_id)
            assert pre is not None
            if not pre.status.terminal:
                await self._queue_one(pre)
                return
            if pre.status is not JobStatus.SUCCEEDED:
                await self._finish(run, RunStatus.FAILED, f"pre-processing job {pre.status.value}")
                return
        counts = await self.store.jobs.student_counts(run)
        if counts[JobStatus.CREATED]:
            if await self.store.jobs.queue_students(run_id, run.n_students, run.course):
                self.on_jobs_queued()
            return
        if counts[JobStatus.QUEUED] or counts[JobStatus.RUNNING]:
            return
        if run.post_job_id:
            post = await self.store.jobs.get(run.post_job_id)
            assert post is not None
            if not post.status.terminal:
                await self._queue_one(post)
                return
            if post.status is not JobStatus.SUCCEEDED:
                await self._finish(run, RunStatus.FAILED, f"post-processing job {post.status.value}")
                return
        await self._finish(run, RunStatus.SUCCEEDED)

    async def job_finished(self, job: Job) -> None:
        """A job reached a final status: advance its run when that may unblock it (a single
        submission has no run: only its callback, if any, is due)."""
        if job.run_id is None:
            if job.single is not None and job.single.callback_url:
                self.on_callback_due()
            return
        run_id = job.run_id
        if job.kind is JobKind.STUDENT:
            # Cheap counter first (reports finishing together share its write); the exact count
            # in advance() only when it says "maybe all done".
            done, n_students = await self.progress.student_done(run_id)
            if done < n_students:
                return
        await self.advance(run_id)

    async def cancel(self, run_id: str) -> Run | None:
        """Cancel a created or running run and every job not finished. None if it had already ended."""
        run = await self.store.runs.get(run_id)
        if run is None or run.status not in (RunStatus.CREATED, RunStatus.RUNNING):
            return None
        if not await self.store.runs.mark_finished(
            run_id, RunStatus.CANCELLED, "cancelled by a client", self._callback_age(run)
        ):
            return None
        self.jobs_cancelled(run, await self.store.jobs.cancel_jobs(run))
        self._callback_recorded(run)  # after the jobs: the callback counts them cancelled
        log.info("run %s cancelled", run.id)
        return await self.store.runs.get(run_id)

    def jobs_cancelled(self, run: Run, n: int) -> None:
        """n of the run's jobs were just cancelled (MeteredScheduler counts them)."""

    def _callback_age(self, run: Run) -> float | None:
        """How long a run's end callback is retried; None when the run has no callback."""
        return self.callback_max_age_s if run.callback_url else None

    def _callback_recorded(self, run: Run) -> None:
        if run.callback_url:
            self.on_callback_due()

    async def _queue_one(self, job: Job) -> None:
        if job.status is JobStatus.CREATED and await self.store.jobs.queue_one(job.id, job.course):
            self.on_jobs_queued()

    async def _finish(self, run: Run, status: RunStatus, error: str | None = None) -> None:
        run_id = run.id
        if status is RunStatus.FAILED:
            self.jobs_cancelled(run, await self.store.jobs.cancel_jobs(run, running=False))
        if await self.store.runs.mark_finished(run_id, status, error, self._callback_age(run)):
            self._callback_recorded(run)
            log.info("run %s %s%s", run.id, status.value, f": {error}" if error else "")


def students_fixed_parts(plan: RunPlan) -> list[str]:
    """The fixed status fields of a planned run's students, by seq (CPU: run in a thread)."""
    students = sorted((job for job in plan.jobs if job.kind is JobKind.STUDENT), key=lambda job: job.seq)
    return [fixed_part(job.job_id, job.stages, job.student) for job in students]
