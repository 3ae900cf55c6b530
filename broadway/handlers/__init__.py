"""HTTP handlers, one module per resource; each exposes `default_handlers`."""

from broadway.handlers import assignments, health, jobs, runs, workers

default_handlers = (
    health.default_handlers
    + runs.default_handlers
    + jobs.default_handlers
    + workers.default_handlers
    + assignments.default_handlers
)
