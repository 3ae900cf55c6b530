"""HTTP handlers, one module per resource; each exposes `default_handlers`."""

from broadway.handlers import assignments, dashboard, health, jobs, metrics, runs, workers

default_handlers = (
    health.default_handlers
    + runs.default_handlers
    + jobs.default_handlers
    + workers.default_handlers
    + assignments.default_handlers
    + metrics.default_handlers
    + dashboard.default_handlers
)
