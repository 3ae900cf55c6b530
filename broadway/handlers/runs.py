"""Client endpoints: submit, start, inspect and cancel grading runs."""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from broadway.handlers.base import ApiError, APIHandler, parse_json
from broadway.models import Job, JobStatus, Run
from broadway.store import parse_id
from broadway.validation import SubmissionError


class GradingRunsHandler(APIHandler):
    async def post(self) -> None:
        """Submit a run: {"json_payload": "<config as a JSON string>"}, or the config object as the body."""
        self.require_client()
        config = await self._config_from_request()
        try:
            run = await self.services.scheduler.submit(config)
        except SubmissionError as e:
            raise ApiError(400, f"invalid grading run: {e}") from None
        self.write_json({"id": run.id})

    async def _config_from_request(self) -> Any:
        payload = self.arg("json_payload")
        if payload is None:
            body = self.json_body
            if isinstance(body, dict) and "student_pipeline" in body:
                return body
            raise ApiError(400, "missing argument 'json_payload' (the grading run config as a JSON string)")
        if isinstance(payload, str):
            return await parse_json(payload, "json_payload")
        return payload


class RunHandler(APIHandler):
    """Base of the handlers of one run, found by the id in the path."""

    async def _run(self, run_id_text: str) -> tuple[Run, ObjectId]:
        run_id = parse_id(run_id_text)
        run = await self.services.store.runs.get(run_id) if run_id else None
        if run is None or run_id is None:
            raise ApiError(404, f"no grading run with id {run_id_text!r}")
        return run, run_id


class GradingRunHandler(RunHandler):
    async def get(self, run_id_text: str) -> None:
        """Statuses of every job of the run (the seed's shape, plus run status, counts and results)."""
        self.require_client()
        run, run_id = await self._run(run_id_text)
        jobs = await self.services.store.jobs.for_run(run_id)
        self.write_json(run_status(run, jobs))

    async def post(self, run_id_text: str) -> None:
        """Start the run: queue its pre-processing job, or its student jobs."""
        self.require_client()
        run, run_id = await self._run(run_id_text)
        started = await self.services.scheduler.start(run_id)
        if started is None:
            raise ApiError(400, f"grading run {run.id} was already started (status: {run.status.value})")
        self.write_json({"id": run.id, "status": "running"})


class CancelRunHandler(RunHandler):
    async def post(self, run_id_text: str) -> None:
        """Cancel a run: jobs not finished are cancelled; graders' reports for them are refused."""
        self.require_client()
        run, run_id = await self._run(run_id_text)
        cancelled = await self.services.scheduler.cancel(run_id)
        if cancelled is None:
            raise ApiError(400, f"grading run {run.id} has already ended (status: {run.status.value})")
        self.write_json({"id": run.id, "status": cancelled.status.value})


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status.value,
        "stages": job.stages,
        "student": job.student,
        "result": job.result,
        "error": job.error,
        "attempts": job.attempts,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def run_status(run: Run, jobs: list[Job]) -> dict[str, Any]:
    students = [job_summary(j) for j in jobs if j.id not in (run.pre_job_id, run.post_job_id)]
    counts = {s.value: 0 for s in JobStatus}
    for summary in students:
        counts[summary["status"]] += 1
    body: dict[str, Any] = {
        "id": run.id,
        "status": run.status.value,
        "error": run.error,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "student_count": run.n_students,
        "counts": counts,
        "student_statuses": students,
    }
    for job in jobs:
        if job.id == run.pre_job_id:
            body["preprocessing_status"] = job_summary(job)
        elif job.id == run.post_job_id:
            body["postprocessing_status"] = job_summary(job)
    return body


default_handlers = [
    (r"/api/v1/grading_run/?", GradingRunsHandler),
    (r"/api/v1/grading_run/([^/]+)/cancel/?", CancelRunHandler),
    (r"/api/v1/grading_run/([^/]+)/?", GradingRunHandler),
]
