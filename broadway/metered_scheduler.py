"""The scheduler, with the jobs it sees finish and cancel counted in broadway.metrics.

Every final status reaches Scheduler.job_finished (a grader's report, the reaper giving up) or
Scheduler.cancel (a run's jobs in bulk), so observing those two covers the outcomes without a
line in the handlers. Requeues happen in the reaper: see metrics.jobs_requeued.
"""

from __future__ import annotations

from typing import Any

from broadway import metrics
from broadway.models import Job, JobStatus, Run
from broadway.scheduler import Scheduler


class MeteredScheduler(Scheduler):
    async def job_finished(self, job: Job) -> None:
        metrics.job_finished(job)
        await super().job_finished(job)

    async def cancel(self, run_id: Any) -> Run | None:  # the scheduler's own id type
        before = await self.store.jobs.status_counts(run_id)
        run = await super().cancel(run_id)
        if run is not None:
            after = await self.store.jobs.status_counts(run_id)
            metrics.jobs_cancelled(after[JobStatus.CANCELLED] - before[JobStatus.CANCELLED])
        return run
