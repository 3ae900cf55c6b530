"""Orca's routes: the grading queue and the holding pen (broadway/orca_queue.py has the rules).

Orca's clients authenticate with `x-api-key` (a course token, or the admin client token) and
read errors as {"errors": [...]}: these handlers answer every 4xx that way, with the usual
"error" and "status" beside it.
"""

from __future__ import annotations

import json
from typing import Any

from broadway.courses import Scope
from broadway.handlers.base import ApiError, APIHandler, needs_scope
from broadway.handlers.queue_room import admit_queued
from broadway.models import Job, JobStatus
from broadway.orca.config import OrcaConfigError
from broadway.orca_queue import holding_pen_status, status_of


class OrcaError(ApiError):
    """A 4xx whose body lists every problem, as Orca's do."""

    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__(status, "; ".join(errors))
        self.errors = errors


class OrcaHandler(APIHandler):
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(exc, ApiError) or status_code >= 500:
            super().write_error(status_code, **kwargs)
            return
        for name, value in exc.headers.items():
            self.set_header(name, value)
        errors = exc.errors if isinstance(exc, OrcaError) else [exc.message]
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"errors": errors, "error": exc.message, "status": status_code}))

    async def orca_job(self, job_id: str) -> Job:
        """The Orca job, if the caller may see it; 404 otherwise (whether or not it exists)."""
        found = await self.services.store.single_jobs.get_owned(job_id)
        is_orca = found is not None and found[0].single is not None and found[0].single.orca_key is not None
        self.owned(found[2] if found and is_orca else None, f"no grading job with id {job_id[:40]!r}")
        assert found is not None
        return found[0]


class GradingQueueHandler(OrcaHandler):
    immediate = False

    @needs_scope(Scope.JOBS)
    async def put(self) -> None:
        """A GradingJobConfig: queued, held for its image, or (same key, not yet running) updated."""
        body = self.json_body
        await self.admit_submission()
        await admit_queued(self, self.caller.course, 1)
        owner = self.caller.owner
        try:
            placed = await self.services.orca_queue.put(body, owner.course, owner.subject, self.immediate)
        except OrcaConfigError as e:
            raise OrcaError(400, e.errors) from None
        if placed.job.status is JobStatus.QUEUED:
            self.services.jobs_signal.notify()
        self.write_json({"message": "OK", "status": status_of(placed.job), "updated": not placed.created})


class ImmediateGradingQueueHandler(GradingQueueHandler):
    immediate = True


class GradingJobHandler(OrcaHandler):
    @needs_scope(Scope.JOBS)
    async def delete(self, job_id: str) -> None:
        """Remove a job (a running one is stopped); its response_url is told, with `errors`."""
        job = await self.orca_job(job_id)
        cancelled = await self.services.store.single_jobs.cancel(job.id, self.services.config.callback_max_age_s)
        if cancelled is None:
            current = await self.orca_job(job_id)
            raise OrcaError(409, [f"job {job_id} has already ended ({current.status.value})"])
        await self.services.scheduler.job_finished(cancelled)
        self.write_json({"message": "OK", "status": status_of(cancelled)})


class GradingJobStatusHandler(OrcaHandler):
    @needs_scope(Scope.JOBS)
    async def get(self, job_id: str) -> None:
        self.write_json(status_of(await self.orca_job(job_id)))


class HoldingPenStatusHandler(OrcaHandler):
    @needs_scope(Scope.JOBS)
    async def get(self, job_id: str) -> None:
        self.write_json(holding_pen_status(await self.orca_job(job_id)))


default_handlers = [
    (r"/api/v1/grading_queue/?", GradingQueueHandler),
    (r"/api/v1/grading_queue/immediate/?", ImmediateGradingQueueHandler),
    (r"/api/v1/grading_queue/([^/]+)/status/?", GradingJobStatusHandler),
    (r"/api/v1/grading_queue/([^/]+)/?", GradingJobHandler),
    (r"/api/v1/holding_pen/([^/]+)/status/?", HoldingPenStatusHandler),
]
