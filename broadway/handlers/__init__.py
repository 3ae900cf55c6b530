"""HTTP handlers, one module per resource; each exposes `default_handlers`."""

from broadway.handlers import (
    assignments,
    courses,
    dashboard,
    grader_images,
    grading_queue,
    health,
    job_files,
    jobs,
    metrics,
    runs,
    single_jobs,
    workers,
)

default_handlers = (
    health.default_handlers
    + runs.default_handlers
    + jobs.default_handlers
    + workers.default_handlers
    + job_files.default_handlers
    + single_jobs.default_handlers
    + assignments.default_handlers
    + courses.default_handlers
    + grader_images.default_handlers
    + grading_queue.default_handlers
    + metrics.default_handlers
    + dashboard.default_handlers
)
