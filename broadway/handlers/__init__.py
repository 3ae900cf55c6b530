"""HTTP handlers, one module per resource; each exposes `default_handlers`."""

from broadway.handlers import (
    assignments,
    courses,
    dashboard,
    health,
    job_files,
    jobs,
    metrics,
    runs,
    single_jobs,
    workers,
)
from broadway.handlers.base import SELF_AUTHENTICATED

# Graders' endpoints authenticate themselves (the cluster token at registration, the worker id
# after): the deny-by-default client authorization of handlers/base.py does not apply to them.
# (The same line may move into each class as `access = SELF_AUTHENTICATED`.)
for _grader_handler in (
    jobs.GradingJobPollHandler,
    jobs.GradingJobReportHandler,
    workers.WorkerRegisterHandler,
    workers.HeartbeatHandler,
    job_files.JobFileHandler,
):
    _grader_handler.access = SELF_AUTHENTICATED

default_handlers = (
    health.default_handlers
    + runs.default_handlers
    + jobs.default_handlers
    + workers.default_handlers
    + job_files.default_handlers
    + single_jobs.default_handlers
    + assignments.default_handlers
    + courses.default_handlers
    + metrics.default_handlers
    + dashboard.default_handlers
)
