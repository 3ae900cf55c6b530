"""Grader endpoints: poll for a job (optionally long-polling) and report its result."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any

from bson import ObjectId

from broadway.environment import env_as_list
from broadway.handlers.base import ApiError, APIHandler
from broadway.models import Job, JobKind, Worker
from broadway.store import parse_id
from broadway.store.jobs import ReportOutcome
from broadway.tokens import digest

log = logging.getLogger(__name__)


class GradingJobPollHandler(APIHandler):
    _client_gone = False

    def on_connection_close(self) -> None:
        # A poller that hung up must not be handed a job: it would sit claimed by nobody
        # listening until the reaper noticed.
        self._client_gone = True

    async def get(self) -> None:
        """The next queued job, or 412 when the queue is empty (after up to `wait` seconds)."""
        wait = self._wait_seconds()
        services = self.services
        worker_id = self.required_str("worker_id")
        # Both lookups at once: this is the hottest path of the API.
        worker, held = await asyncio.gather(
            self.require_worker(worker_id), services.store.jobs.count_held(digest(worker_id))
        )
        if held >= worker.slots:
            raise ApiError(409, f"this worker already runs {held} job(s) with {worker.slots} slot(s): report one first")
        deadline = time.monotonic() + wait
        while not self._client_gone:
            job = await services.store.jobs.claim_next(worker.ref)
            if job is not None:
                if self._client_gone:
                    await services.store.jobs.release(ObjectId(job.id), job.attempt_id or "")
                    services.jobs_signal.notify()
                    return
                log.info("job %s (attempt %d) -> worker %s", job.id, job.attempts, worker_label(worker))
                self.write_json(await self._job_payload(job))
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await services.jobs_signal.wait(min(remaining, services.config.poll_recheck_interval))
        if not self._client_gone:
            raise ApiError(412, "The queue is empty")

    def _wait_seconds(self) -> float:
        value = self.arg("wait")
        if value is None:
            return 0.0
        try:
            wait = float(value)
        except (TypeError, ValueError):
            raise ApiError(400, "argument 'wait' must be a number of seconds") from None
        if not wait >= 0:  # also rejects NaN
            raise ApiError(400, "argument 'wait' must not be negative")
        return min(wait, self.services.config.max_poll_wait)

    async def _job_payload(self, job: Job) -> dict[str, Any]:
        stages = [{**stage, "env": env_as_list(stage.get("env", {}))} for stage in job.stages]
        payload: dict[str, Any] = {
            "job_id": job.id,
            "stages": stages,
            "attempt": job.attempt_id,
            "grading_run_id": job.run_id,
            "kind": job.kind.value,
        }
        if job.kind is not JobKind.STUDENT:
            students = [s async for s in self.services.store.jobs.roster(ObjectId(job.run_id))]
            payload["students"] = [
                {"job_id": s.id, "env": s.student, "status": s.status.value, "result": s.result}
                for s in sorted(students, key=lambda s: s.seq)
            ]
        return payload


class GradingJobReportHandler(APIHandler):
    async def post(self, job_id_text: str) -> None:
        """Record the result of a job that this worker holds; 409 (and no change) otherwise."""
        worker_id = self.required_str("worker_id")
        job_id = parse_id(job_id_text)
        result = self._result()
        success = _bool_arg(self.arg("success"), "success", default=True)
        attempt = self.arg("attempt")
        if attempt is not None and not isinstance(attempt, str):
            raise ApiError(400, "argument 'attempt' must be a string")
        # Additive to the seed: a grader names an infrastructure failure (image missing, Docker
        # down) here, so that it is kept apart from the student's own result. It fails the job.
        error = self.arg("error")
        if error is not None and not isinstance(error, str):
            raise ApiError(400, "argument 'error' must be a string")
        error = error[:2000] if error else None
        success = success and error is None
        if job_id is None:
            raise ApiError(404, f"no grading job with id {job_id_text!r}")
        fingerprint = hashlib.sha256(f"{success}\0{error}\0{result}".encode("utf-8", "surrogatepass")).hexdigest()
        services = self.services
        report = await services.store.jobs.report(
            job_id, digest(worker_id), attempt or None, success, result, fingerprint, error
        )
        if report.outcome is ReportOutcome.NOT_FOUND:
            raise ApiError(404, f"no grading job with id {job_id_text!r}")
        if report.outcome is ReportOutcome.CONFLICT:
            assert report.job is not None
            raise ApiError(
                409,
                f"job {report.job.id} is not running under this worker and attempt "
                f"(status: {report.job.status.value}); the result was not recorded",
            )
        if report.outcome is ReportOutcome.RECORDED:
            assert report.job is not None
            log.info("job %s %s", report.job.id, report.job.status.value)
            await services.scheduler.job_finished(report.job)
        self.write_json({"job_id": job_id_text, "duplicate": report.outcome is ReportOutcome.DUPLICATE})

    def _result(self) -> str:
        value = self.arg("result")
        if value is None:
            raise ApiError(400, "missing argument 'result'")
        text = value if isinstance(value, str) else json.dumps(value)
        cap = self.services.config.max_result_bytes
        encoded = text.encode("utf-8", "surrogatepass")
        if len(encoded) > cap:
            marker = f"\n[result truncated by the API: {len(encoded)} bytes, limit {cap}]"
            text = encoded[: cap - len(marker)].decode("utf-8", "ignore") + marker
        return text


def _bool_arg(value: Any, name: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, f"argument {name!r} must be true or false")


def worker_label(worker: Worker) -> str:
    return f"{worker.name or '?'} ({worker.ref[:8]})"


default_handlers = [
    (r"/api/v1/grading_job/?", GradingJobPollHandler),
    (r"/api/v1/grading_job/([^/]+)/?", GradingJobReportHandler),
]
