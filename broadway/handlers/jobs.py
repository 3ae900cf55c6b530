"""Grader endpoints: poll for a job (optionally long-polling) and report its result."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tornado.iostream import IOStream, StreamClosedError

from broadway.environment import env_as_list
from broadway.handlers.base import SELF_AUTHENTICATED, ApiError, APIHandler
from broadway.handlers.grader_images import build_payload, sweeper
from broadway.liveness import worker_label
from broadway.models import Job, JobKind, Worker
from broadway.single_jobs import ending_for
from broadway.store import is_store_failure, valid_id
from broadway.store.images import ImageBuild
from broadway.store.jobs import ReportOutcome
from broadway.tokens import digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimer:
    """Who a claim is for: the worker's ref, how logs name it, and its record when it was looked
    up (a report that freed a slot of a non-legacy worker needs none: see JobStore.report)."""

    ref: str
    label: str
    worker: Worker | None = None

    @property
    def legacy(self) -> bool:
        return self.worker is not None and self.worker.legacy

    @property
    def builds(self) -> bool:
        """Started with --build: it is handed grader image builds, before any job."""
        return self.worker is not None and bool(self.worker.extra.get("build"))


class JobHandOut(APIHandler):
    """Claiming a job for a waiting grader and handing it out safely: what a poll does, and a
    report that asks for the next job (`next=1`) does after recording its result."""

    _client_gone = False

    def on_connection_close(self) -> None:
        # A poller that hung up must not be handed a job: it would sit claimed by nobody
        # listening until the reaper noticed.
        self._client_gone = True

    async def _claimer_with_free_slot(self, ref: str) -> Claimer:
        """The worker, revived if it was declared dead; 404 if it never registered, 409 if all
        its slots are taken."""
        services = self.services
        # Both lookups at once: a poll's hottest part.
        worker, held = await asyncio.gather(services.store.workers.get(ref), services.store.jobs.count_held(ref))
        if worker is not None and not worker.alive:
            # Declared dead, yet polling: it is back (the 2018 grader never registers again).
            worker = await services.reaper.revive(worker)
        if worker is None:
            raise ApiError(404, "unknown worker (never registered): register again")
        if worker.extra.get("build"):
            held += len(await services.store.images.held_by(worker.ref))
        if held >= worker.slots:
            raise ApiError(409, f"this worker already runs {held} job(s) with {worker.slots} slot(s): report one first")
        return Claimer(worker.ref, worker_label(worker), worker)

    async def _next_job(self, claimer: Claimer, wait: float) -> Job | ImageBuild | None:
        """Claim the next queued job for `claimer` (for a builder, a queued image build first),
        waiting up to `wait` seconds for one; None if none came, or the client hung up meanwhile."""
        services = self.services
        deadline = time.monotonic() + wait
        while not self._poller_gone():
            if claimer.builds:
                # Builds are what jobs in the holding pen wait for: they go first.
                await sweeper(self).sweep(services)
                build = await services.store.images.claim_next(claimer.ref, services.config.build_timeout_s)
                if build is not None:
                    return build
            job = await services.store.jobs.claim_next(claimer.ref, claimer.legacy)
            if job is not None:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await services.jobs_signal.wait(min(remaining, services.config.poll_recheck_interval))
        return None

    async def _hand_out(self, job: Job | ImageBuild, claimer: Claimer, answer: Callable[[dict[str, Any]], Any]) -> bool:
        """Send a claimed job (its payload wrapped by `answer`) to its poller, or give it back if
        the poller is gone; whether it was delivered.

        The poller may hang up at any moment, and Tornado does not always tell: a close before
        the request was fully read never reaches on_connection_close, and a FIN the event loop
        has not processed yet is only visible on the socket. So check every way just before
        writing, and treat a write onto a closed stream as undelivered too. A hang-up after the
        answer left is beyond the API's sight; the worker's lease (or its heartbeat's job list)
        takes such a job back.
        """
        services = self.services
        delivered = False
        try:
            if isinstance(job, ImageBuild):
                payload = build_payload(job)
            else:
                if claimer.worker is not None and claimer.legacy:
                    await services.reaper.hold_for_job(claimer.worker, job)
                payload = await self._job_payload(job)
            body = json.dumps(answer(payload))
            if not self._poller_gone():
                self.set_status(200)
                await self.finish(body)
                delivered = True
        except StreamClosedError:
            pass
        finally:
            if not delivered:
                await self._give_back(job)
        if delivered and isinstance(job, ImageBuild):
            log.info("image build %s (attempt %d) -> worker %s", job.sha[:12], job.attempts, claimer.label)
        elif delivered:
            log.info("job %s (attempt %d) -> worker %s", job.id, job.attempts, claimer.label)
        return delivered

    async def _give_back(self, job: Job | ImageBuild) -> None:
        services = self.services
        try:
            if isinstance(job, ImageBuild):
                if await services.store.images.release(job.sha, job.attempt_id or ""):
                    log.info("image build %s given back: its poller hung up before receiving it", job.sha[:12])
                    services.jobs_signal.notify()
            elif await services.store.jobs.release(job.id, job.attempt_id or ""):
                log.info("job %s given back: its poller hung up before receiving it", job.id)
                services.jobs_signal.notify()
        except Exception as e:
            if not is_store_failure(e):
                raise
            # Still `running` under a worker nobody hears from: its lease runs out and the reaper requeues it.
            log.warning("job %s could not be given back (store unavailable: %s)", job.id, e)

    def _poller_gone(self) -> bool:
        if self._client_gone:
            return True
        stream: IOStream | None = getattr(self.request.connection, "stream", None)
        if stream is None:
            return False  # not an HTTP/1 connection we can look into
        return stream.closed() or _peer_closed(stream.socket)

    def _wait_seconds(self) -> float:
        value = self.arg("wait")
        if value is None:
            return self.services.config.poll_hold
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
        if job.kind is JobKind.SINGLE and job.single is not None:
            # Where the grader fetches each submitted file (with its worker id) to /job/files/<name>.
            payload["files"] = [
                {"name": f["name"], "size": f["size"], "url": job_file_path(job.id, f["name"])}
                for f in job.single.files
            ]
            if job.single.exercise:
                payload["exercise"] = job.single.exercise
        elif job.kind is not JobKind.STUDENT:
            assert job.run_id is not None
            students = sorted([s async for s in self.services.store.jobs.roster(job.run_id)], key=_by_seq)
            # As the seed (and 2018 API) sent it: the run's students exactly as submitted. The
            # 2018 grader writes it verbatim to /job/roster.json for post-processing images.
            payload["students"] = [s.student for s in students]
            payload["student_results"] = [
                {"job_id": s.id, "env": s.student, "status": s.status.value, "result": s.result} for s in students
            ]
        return payload


def job_file_path(job_id: str, name: str) -> str:
    """Where a grader downloads one of a single job's files (see handlers/job_files.py)."""
    return f"/api/v1/grading_job/{job_id}/files/{urllib.parse.quote(name, safe='/')}"


def _by_seq(job: Job) -> int:
    return job.seq


def _peer_closed(sock: socket.socket | None) -> bool:
    """Whether the peer has closed its end (a FIN waits on the socket), without reading anything."""
    if sock is None:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing sent: the normal case
    except OSError:
        return True  # reset


class GradingJobPollHandler(JobHandOut):
    # A grader's endpoint: it checks its own credentials (cluster token, worker id), not a client's.
    access = SELF_AUTHENTICATED

    async def get(self) -> None:
        """The next queued job, or 412 when the queue stayed empty (up to `wait` seconds, or
        --poll-hold when the poll names no `wait`, as the 2018 grader's do)."""
        wait = self._wait_seconds()
        claimer = await self._claimer_with_free_slot(digest(self.required_str("worker_id")))
        job = await self._next_job(claimer, wait)
        if job is not None and await self._hand_out(job, claimer, _as_is):
            return
        if not self._finished:
            # Nobody should be listening (or the queue stayed empty); this is what a poll may answer.
            raise ApiError(412, "The queue is empty")


def _as_is(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


class GradingJobReportHandler(JobHandOut):
    # A grader's endpoint: it checks its own credentials (cluster token, worker id), not a client's.
    access = SELF_AUTHENTICATED

    async def post(self, job_id_text: str) -> None:
        """Record the result of a job that this worker holds; 409 (and no change) otherwise.

        Additive to the seed: `next=1` asks for the next job in the same round trip. Once the
        result is recorded the request goes on exactly as a poll (`wait` seconds, --poll-hold
        when it names none; the same hand-out, never to a client that hung up), and the answer
        carries the job a poll would have answered under "next", or null when the queue stayed
        empty. The reported job's slot is free by then, so a 1-slot worker gets its next job.
        When no job may be handed out (all slots still taken, or the worker unknown) "next" is
        null at once and "next_refused" says why; the result stays recorded either way.
        """
        worker_id = self.required_str("worker_id")
        job_id = valid_id(job_id_text)
        wants_next = _bool_arg(self.arg("next"), "next", default=False)
        wait = self._wait_seconds() if wants_next else 0.0
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
        ref = digest(worker_id)
        ending = None
        if self.arg("kind") == JobKind.SINGLE.value:
            # Our grader says which kind it ran; a single job's ending is decided from its record.
            found = await services.store.single_jobs.get(job_id_text)
            if found is not None:
                ending = ending_for(found[0], success, result, error, services.config.callback_max_age_s)
        report = await services.store.jobs.report(
            job_id, ref, attempt or None, success, result, fingerprint, error, ending
        )
        if report.outcome is ReportOutcome.WRONG_KIND:
            # No hint (the 2018 grader) or a wrong one: decide for the job's real kind, once more.
            assert report.job is not None
            if report.job.single is not None:
                ending = ending_for(report.job, success, result, error, services.config.callback_max_age_s)
            else:
                ending = None
            report = await services.store.jobs.report(
                job_id, ref, attempt or None, success, result, fingerprint, error, ending
            )
        if report.outcome is ReportOutcome.WRONG_KIND:
            report = dataclasses.replace(report, outcome=ReportOutcome.CONFLICT)
        if report.outcome in (ReportOutcome.NOT_FOUND, ReportOutcome.CONFLICT):
            # Only a known worker learns whether a job exists: else job ids could be probed
            # with any made-up worker id. Checked on refusals only, off the hot path.
            if await services.store.workers.get(ref) is None:
                raise ApiError(404, "unknown worker (never registered): register again")
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
        answer = {"job_id": job_id_text, "duplicate": report.outcome is ReportOutcome.DUPLICATE}
        if not wants_next:
            self.write_json(answer)
            return
        if report.freed_slot and not report.claimed_legacy:
            # It ran this job until now, so it is alive and one of its slots is free: no lookup.
            claimer = Claimer(ref, f"? ({ref[:8]})")
        else:
            try:
                claimer = await self._claimer_with_free_slot(ref)
            except ApiError as e:
                self.write_json({**answer, "next": None, "next_refused": e.message})
                return
        job = await self._next_job(claimer, wait)
        if job is not None and await self._hand_out(job, claimer, lambda payload: {**answer, "next": payload}):
            return
        if not self._finished:
            self.write_json({**answer, "next": None})

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


default_handlers = [
    (r"/api/v1/grading_job/?", GradingJobPollHandler),
    (r"/api/v1/grading_job/([^/]+)/?", GradingJobReportHandler),
]
