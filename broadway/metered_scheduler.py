"""The scheduler, with the jobs it sees finish and cancel counted in broadway.metrics.

Every final status reaches Scheduler.job_finished (a grader's report, the reaper giving up) or
Scheduler.jobs_cancelled (a run's jobs in bulk, when it is cancelled or fails), so observing
those two covers the outcomes without a line in the handlers. Requeues happen in the reaper:
see metrics.jobs_requeued.
"""

from __future__ import annotations

from broadway import metrics
from broadway.models import Job, Run
from broadway.scheduler import Scheduler


class MeteredScheduler(Scheduler):
    async def job_finished(self, job: Job) -> None:
        metrics.job_finished(job)
        await super().job_finished(job)

    def jobs_cancelled(self, run: Run, n: int) -> None:
        metrics.jobs_cancelled(n, run.course)
