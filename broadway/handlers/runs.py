"""Client endpoints: submit, start, inspect and cancel grading runs."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from tornado.iostream import IOStream, StreamClosedError

from broadway.courses import Scope
from broadway.handlers.base import ApiError, APIHandler, needs_scope, parse_json
from broadway.handlers.queue_room import admit_queued
from broadway.models import Job, JobStatus, Run, RunStatus
from broadway.run_status_parts import entry, fixed_part
from broadway.store import valid_id
from broadway.store.run_pages import MOVING_FIELDS, PAGE_SIZE, WHOLE_READ_MAX, WHOLE_READ_MAX_BYTES, PipelineJobs
from broadway.validation import SubmissionError

# The most students one `?offset=&limit=` page holds.
MAX_PAGE_LIMIT = 1000
_COUNT = re.compile(r"[0-9]{1,12}")


class GradingRunsHandler(APIHandler):
    @needs_scope(Scope.RUNS)
    async def post(self) -> None:
        """Submit a run: {"json_payload": "<config as a JSON string>"}, or the config object as the body.
        It is the caller's (its course's, and its subject's for a JWT); a run takes one token of
        the course's rate."""
        config = await self._config_from_request()
        await self.admit_submission()
        try:
            run = await self.services.scheduler.submit(config, self.caller.owner)
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

    async def _run(self, run_id_text: str) -> tuple[Run, str]:
        """The run, if the caller may see it; 404 otherwise (whether or not it exists)."""
        run_id = valid_id(run_id_text)
        found = await self.services.store.runs.get_owned(run_id) if run_id else None
        not_found = f"no grading run with id {_short(run_id_text)!r}"
        self.owned(found[1] if found else None, not_found)
        assert found is not None and run_id is not None
        return found[0], run_id


class GradingRunHandler(RunHandler):
    @needs_scope(Scope.RUNS)
    async def get(self, run_id_text: str) -> None:
        """A run's status: every job (the seed's shape, plus run status, counts and results),
        `?summary=1` for the status and counts alone, `?offset=&limit=` for one page of students."""
        query = self._status_query()
        run, _ = await self._run(run_id_text)
        pages = self.services.store.run_pages
        pipeline = await pages.pipeline_jobs(run)
        if query.summary:
            counts = await self.services.store.jobs.student_counts(run)
            self.write_json(run_summary(run, counts, pipeline))
        elif query.limit is not None:
            counts = await self.services.store.jobs.student_counts(run)
            jobs = await pages.students(run, query.offset, query.limit)
            self.write_json(run_page(run, counts, pipeline, query.offset, query.limit, jobs))
        else:
            await self._stream_full_status(run, pipeline)

    def _status_query(self) -> StatusQuery:
        summary = self.arg("summary")
        if summary not in (None, "", "0", "1", "false", "true"):
            raise ApiError(400, f"summary must be 1 or 0, got {_short(summary)!r}")
        offset, limit = _count_arg(self.arg("offset"), "offset"), _count_arg(self.arg("limit"), "limit")
        if limit is not None and limit > MAX_PAGE_LIMIT:
            raise ApiError(400, f"limit must be at most {MAX_PAGE_LIMIT}, got {limit}")
        wants_summary = summary in ("1", "true")
        if wants_summary and (offset is not None or limit is not None):
            raise ApiError(400, "summary=1 has no job list to page: drop offset and limit, or summary")
        if offset is not None and limit is None:
            limit = MAX_PAGE_LIMIT
        return StatusQuery(summary=wants_summary, offset=offset or 0, limit=limit)

    async def _stream_full_status(self, run: Run, pipeline: PipelineJobs) -> None:
        """The whole run, written a page of students at a time.

        At 100,000 students the body is ~150 MB: built in one piece it held the event loop (and so
        every heartbeat) for seconds and the memory for all of it. Each page is one short store
        operation, encoded in a thread and flushed before the next is read, so memory stays at a
        page and heartbeats get in between. Counts come from the pages themselves, so they agree
        with the list; they go after it (JSON key order carries no meaning).
        """
        # Each page is flushed while more follows: with Nagle's algorithm on, the tail of every
        # flush waited for the client's delayed ACK (~40 ms a page). Tornado turns it back off
        # when the response ends.
        stream = getattr(self.request.connection, "stream", None)
        if isinstance(stream, IOStream):
            stream.set_nodelay(True)
        head = json.dumps(run_fields(run) | {"student_statuses": None})
        self.write(head[: -len("null}")] + "[")
        counts = {status: 0 for status in JobStatus}
        separator = ""
        # Each student's id, stages and student never change: this process keeps them encoded
        # (broadway/run_status_parts.py), so only the moving fields are read and encoded. A run it
        # has not kept is read whole, and kept for the next time.
        status_parts = self.services.scheduler.status_parts
        fixed = status_parts.get(run.id)
        if fixed is not None and len(fixed) != run.n_students:
            fixed = None
        kept: list[str] = []
        pages = self.services.store.run_pages
        one_read = (
            fixed is not None and run.n_students <= WHOLE_READ_MAX and sum(map(len, fixed)) <= WHOLE_READ_MAX_BYTES
        )
        moving = await pages.all_students_moving(run) if one_read else None
        try:
            for offset in range(0, run.n_students, PAGE_SIZE):
                if fixed is not None and moving is not None:
                    page = moving[offset : offset + PAGE_SIZE]
                    text = await asyncio.to_thread(encode_entries, fixed[offset : offset + len(page)], page)
                    statuses = [JobStatus(m["status"]) for m in page]
                else:
                    jobs = await pages.students(run, offset, PAGE_SIZE)
                    text, parts = await asyncio.to_thread(encode_jobs_keeping_parts, jobs)
                    kept.extend(parts)
                    statuses = [job.status for job in jobs]
                for status in statuses:
                    counts[status] += 1
                if text:
                    self.write(separator + text)
                    separator = ","
                await self.flush()
            if fixed is None and len(kept) == run.n_students:
                status_parts.put(run.id, kept)
            tail = json.dumps({"counts": counts_json(counts)} | pipeline_json(pipeline))
            self.finish("]," + tail[1:])
        except StreamClosedError:
            pass  # the client hung up; nothing more to send

    @needs_scope(Scope.RUNS)
    async def post(self, run_id_text: str) -> None:
        """Start the run: queue its pre-processing job, or its student jobs."""
        run, run_id = await self._run(run_id_text)
        if run.status is RunStatus.CREATED:
            await admit_queued(self, run.course, run.n_students)
        started = await self.services.scheduler.start(run_id)
        if started is None:
            raise ApiError(400, f"grading run {run.id} was already started (status: {run.status.value})")
        self.write_json({"id": run.id, "status": "running"})


class CancelRunHandler(RunHandler):
    @needs_scope(Scope.RUNS)
    async def post(self, run_id_text: str) -> None:
        """Cancel a run: jobs not finished are cancelled; graders' reports for them are refused."""
        run, run_id = await self._run(run_id_text)
        cancelled = await self.services.scheduler.cancel(run_id)
        if cancelled is None:
            raise ApiError(400, f"grading run {run.id} has already ended (status: {run.status.value})")
        self.write_json({"id": run.id, "status": cancelled.status.value})


@dataclass(frozen=True)
class StatusQuery:
    summary: bool
    offset: int
    limit: int | None  # None: every student


def _count_arg(value: object, name: str) -> int | None:
    if value is None or value == "":
        return None
    text = str(value)
    if not _COUNT.fullmatch(text):
        raise ApiError(400, f"{name} must be a non-negative integer, got {_short(text)!r}")
    return int(text)


def _short(text: object, limit: int = 40) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


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


def run_fields(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status.value,
        "error": run.error,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "student_count": run.n_students,
    }


def counts_json(counts: dict[JobStatus, int]) -> dict[str, int]:
    return {status.value: counts.get(status, 0) for status in JobStatus}


def pipeline_json(pipeline: PipelineJobs, brief: bool = False) -> dict[str, Any]:
    body = {}
    for key, job in (("preprocessing_status", pipeline.pre), ("postprocessing_status", pipeline.post)):
        if job is not None:
            summary = job_summary(job)
            if brief:  # a summary stays small: a result may be megabytes
                del summary["stages"], summary["result"]
            body[key] = summary
    return body


def run_summary(run: Run, counts: dict[JobStatus, int], pipeline: PipelineJobs) -> dict[str, Any]:
    """Status and counts, no job list: what a progress display needs, cheap at any run size."""
    return run_fields(run) | {"counts": counts_json(counts)} | pipeline_json(pipeline, brief=True)


def run_page(
    run: Run, counts: dict[JobStatus, int], pipeline: PipelineJobs, offset: int, limit: int, jobs: list[Job]
) -> dict[str, Any]:
    """One page of students, with the run's counts, and where the page lies in the whole."""
    page = {"offset": offset, "limit": limit, "returned": len(jobs), "total": run.n_students}
    body = run_fields(run) | {"counts": counts_json(counts), "page": page}
    return body | {"student_statuses": [job_summary(j) for j in jobs]} | pipeline_json(pipeline)


def encode_jobs_keeping_parts(jobs: list[Job]) -> tuple[str, list[str]]:
    """A page of students as JSON list items without the brackets, and each one's fixed part
    (CPU: run it in a thread)."""
    parts = [fixed_part(job.id, job.stages, job.student) for job in jobs]
    return encode_entries(parts, [moving_fields(job) for job in jobs]), parts


def encode_entries(parts: list[str], moving: list[dict[str, Any]]) -> str:
    """Students' entries from their fixed parts and moving fields, as JSON list items (CPU: thread)."""
    return ",".join(entry(fixed, fields) for fixed, fields in zip(parts, moving, strict=True))


def moving_fields(job: Job) -> dict[str, Any]:
    summary = job_summary(job)
    return {name: summary[name] for name in MOVING_FIELDS}


default_handlers = [
    (r"/api/v1/grading_run/?", GradingRunsHandler),
    (r"/api/v1/grading_run/([^/]+)/cancel/?", CancelRunHandler),
    (r"/api/v1/grading_run/([^/]+)/?", GradingRunHandler),
]
