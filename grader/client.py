"""The grader's side of the API: register, poll, heartbeat, report, with retries that never spin.

Requests go over kept-alive connections (libcurl's pool, through Tornado's curl client): a new
TCP connection per request cost the API more than the job it carried. A kept-alive connection the
API has closed meanwhile (idle timeout, restart) costs nothing visible: libcurl drops one it finds
closed, and resends on a fresh connection a request whose reused connection died before any answer
came back (tests/grader/test_client.py shows both). Every request here may go out twice that way:
register, poll and heartbeat are idempotent, and the API counts the same report twice as one result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.iostream import StreamClosedError

from grader import metrics
from grader.config import GraderConfig

log = logging.getLogger(__name__)

# Tornado's curl client logs every request's URL at DEBUG, and ours carry the cluster token or the
# worker id in their query strings: those lines never get written, whatever the grader's log level.
logging.getLogger("tornado.curl_httpclient").setLevel(logging.INFO)

# Failures of the network or of an API that is restarting: worth retrying later.
_TRANSPORT_ERRORS = (OSError, HTTPClientError, StreamClosedError, asyncio.TimeoutError)


class Unreachable(Exception):
    """The API could not be reached or answered 5xx; the caller retries later."""


class WorkerUnknown(Exception):
    """The API does not know this worker (forgotten, or declared dead): register again."""


class SlotsBusy(Exception):
    """The API counts as many running jobs for this worker as it has slots (409 on poll)."""


class Rejected(Exception):
    """The API refused the cluster token or a request; retrying the same request cannot help."""


class Backoff:
    """Exponential delays with full jitter, capped, so a fleet of graders never retries in step."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * 2**self.failures)
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)  # jitter, not a secret

    def reset(self) -> None:
        self.failures = 0

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())


@dataclass(frozen=True)
class Registration:
    worker_id: str
    heartbeat_s: float


class GraderClient:
    """HTTP calls of the seed v1 contract, with the worker id kept here and never logged."""

    def __init__(self, config: GraderConfig) -> None:
        self.config = config
        self.base = config.api_url.rstrip("/") + "/api/v1"
        # Room for one long poll, one heartbeat and a report from every slot at the same time;
        # each of them keeps its connection open for the next request.
        self.http = _KeepAliveClient(force_instance=True, max_clients=config.slots + 4)
        self.registration: Registration | None = None
        # HTTP requests made (the dispatch benchmark prints them per job).
        self.requests_sent = 0

    def close(self) -> None:
        self.http.close()

    @property
    def worker_id(self) -> str:
        if self.registration is None:
            raise WorkerUnknown("not registered")
        return self.registration.worker_id

    async def _call(
        self, method: str, path: str, params: dict[str, str], body: Any = None, seconds: float | None = None
    ) -> HTTPResponse:
        """One request; the metrics count it under the call's name (register, poll, ...): ok when
        the API answered with the call's expected statuses."""
        call = _call_name(path)
        started = time.monotonic()
        try:
            response = await self._send(method, path, params, body, seconds)
        except Unreachable:
            metrics.api_call(call, False, time.monotonic() - started)
            raise
        metrics.api_call(call, response.code in (200, 412), time.monotonic() - started)
        return response

    async def _send(
        self, method: str, path: str, params: dict[str, str], body: Any = None, seconds: float | None = None
    ) -> HTTPResponse:
        # The URL carries secrets in its query string: errors name the method and path only.
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        request = HTTPRequest(
            url,
            method=method,
            body=json.dumps(body) if body is not None else ("" if method == "POST" else None),
            headers={"Content-Type": "application/json"},
            request_timeout=seconds or self.config.request_timeout_s,
            connect_timeout=10,
            prepare_curl_callback=_ignore_proxy_environment,
        )
        self.requests_sent += 1
        try:
            response = await self.http.fetch(request, raise_error=False)
        except CurlError as exc:  # libcurl's own message: "Failed to connect to ...", timeouts
            raise Unreachable(f"{method} {path}: {self._scrub(str(exc))}") from None
        except _TRANSPORT_ERRORS as exc:
            raise Unreachable(f"{method} {path}: {type(exc).__name__}: {self._scrub(str(exc))}") from None
        if response.code >= 500 or response.code == 599:
            raise Unreachable(f"{method} {path}: HTTP {response.code} {self._error_text(response)}")
        return response

    def _scrub(self, text: str) -> str:
        """Text from elsewhere (libcurl, the API) with the token and worker id blanked, should it
        ever quote them."""
        for secret in (self.config.token, self.registration.worker_id if self.registration else ""):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _error_text(self, response: HTTPResponse) -> str:
        return self._scrub(_error_text(response))

    async def register(self) -> Registration:
        """Join the cluster, retrying while the API is unreachable; Rejected on a wrong token."""
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        params = {"token": self.config.token}
        if self.config.name:
            params["name"] = self.config.name
        params["slots"] = str(self.config.slots)
        if self.config.build:
            params["build"] = "true"
        while True:
            try:
                response = await self._call("GET", "/worker_register", params)
            except Unreachable as exc:
                delay = backoff.next_delay()
                log.warning("cannot register (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            if response.code != 200:
                raise Rejected(f"registration refused: HTTP {response.code} {self._error_text(response)}")
            answer = json.loads(response.body)
            self.registration = Registration(str(answer["worker_id"]), float(answer["heartbeat"]))
            log.info("registered with %s; heartbeat every %ss", self.config.api_url, answer["heartbeat"])
            return self.registration

    async def poll(self, wait: float) -> dict[str, Any] | None:
        """The next job, or None when the queue stayed empty for `wait` seconds."""
        params = {"worker_id": self.worker_id, "wait": f"{wait:g}"}
        response = await self._call("GET", "/grading_job", params, seconds=wait + self.config.request_timeout_s)
        if response.code == 200:
            job: dict[str, Any] = json.loads(response.body)
            return job
        if response.code in (401, 404):
            raise WorkerUnknown(self._error_text(response))
        if response.code == 412:
            return None
        if response.code == 409:
            # The API still counts a job of ours whose report is on its way, or one whose claim
            # never reached us (the heartbeat's job list makes the API take that one back).
            raise SlotsBusy(self._error_text(response))
        raise Rejected(f"poll refused: HTTP {response.code} {self._error_text(response)}")

    async def heartbeat(self, running: list[str]) -> list[str]:
        """Tell the API this worker is alive and which jobs it runs; WorkerUnknown when it has
        been declared dead. Returns the jobs among `running` that were cancelled (the answer's
        `abort`): the grader kills them and does not report them."""
        response = await self._call("POST", "/heartbeat", {"worker_id": self.worker_id, "jobs": ",".join(running)})
        if response.code in (401, 404):
            raise WorkerUnknown(self._error_text(response))
        if response.code != 200:
            raise Rejected(f"heartbeat refused: HTTP {response.code} {self._error_text(response)}")
        try:
            answer = json.loads(response.body or b"{}")
        except ValueError:
            return []
        abort = answer.get("abort") if isinstance(answer, dict) else None
        if not isinstance(abort, list):
            return []
        named = set(running)
        return [job_id for job_id in abort if isinstance(job_id, str) and job_id in named]

    async def report(
        self,
        job_id: str,
        result: str,
        success: bool,
        attempt: str | None,
        error: str | None = None,
        *,
        kind: str | None = None,
    ) -> bool:
        """Deliver a result, retrying while the API is unreachable. False when the API refused it
        (409: the job was taken away from this worker, e.g. after it was declared dead).
        `error` marks an infrastructure failure (not the student's), which the API keeps apart.
        `kind` is the job's kind from its payload ("single"...), sent back so the API decides a
        single job's grade without looking the job up first."""
        body = _report_body(result, success, attempt, error, kind)
        return await self._send_report(job_id, body, {}) is not None

    async def report_and_next(
        self,
        job_id: str,
        result: str,
        success: bool,
        attempt: str | None,
        error: str | None = None,
        *,
        kind: str | None = None,
        wait: float = 0.0,
    ) -> tuple[bool, dict[str, Any] | None]:
        """Deliver a result and ask for this slot's next job in the same request (one round trip
        per job in steady state): (recorded, the next job or None). None when the queue stayed
        empty for `wait` seconds, no job could be handed out, or the API is older and answers no
        `next`: the caller polls as before."""
        body = _report_body(result, success, attempt, error, kind)
        params = {"next": "1", "wait": f"{wait:g}"}
        response = await self._send_report(job_id, body, params, seconds=wait + self.config.request_timeout_s)
        if response is None:
            return False, None
        try:
            answer = json.loads(response.body or b"{}")
        except ValueError:
            return True, None
        job = answer.get("next") if isinstance(answer, dict) else None
        return True, job if isinstance(job, dict) else None

    async def _send_report(
        self, job_id: str, body: dict[str, Any], params: dict[str, str], seconds: float | None = None
    ) -> HTTPResponse | None:
        """POST a report until the API answers (an API that is down is waited for); the 200
        answer, or None when the API refused the result."""
        path = f"/grading_job/{urllib.parse.quote(job_id, safe='')}"
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while True:
            try:
                response = await self._call("POST", path, {"worker_id": self.worker_id, **params}, body, seconds)
            except Unreachable as exc:
                delay = backoff.next_delay()
                log.warning("cannot report job %s (%s); retrying in %.1fs", job_id, exc, delay)
                await asyncio.sleep(delay)
                continue
            if response.code == 200:
                return response
            log.warning("result of job %s dropped: HTTP %d %s", job_id, response.code, self._error_text(response))
            return None

    def api_path(self, path: Any) -> str:
        """A path the API handed out (a build's archive or result URL) relative to /api/v1, so
        that the worker id only ever goes to --api-url; ValueError for anything else."""
        if not isinstance(path, str) or not path.startswith("/api/v1/") or "//" in path or ".." in path:
            raise ValueError(f"not a path on the API: {str(path)[:100]!r}")
        return path[len("/api/v1") :]

    async def upload_image(self, archive_url: str, attempt: str, archive: Path, size: int) -> bool:
        """Stream a build's archive (a file of `size` bytes) to the API, retrying while it is
        unreachable; False when the API refused it (this attempt no longer holds the build, or
        it is too large). libcurl reads the file as it sends (page-cache reads of its buffer size)."""
        path = self.api_path(archive_url)
        # The body streams from the file: never whole in memory. Allow ~5 MB/s at the least.
        seconds = max(self.config.request_timeout_s, size / 5e6)
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while True:
            with archive.open("rb") as handle:

                def stream_from_file(curl: Any, handle: Any = handle) -> None:
                    _ignore_proxy_environment(curl)
                    curl.setopt(pycurl.READFUNCTION, handle.read)
                    curl.setopt(pycurl.POSTFIELDSIZE_LARGE, size)

                url = f"{self.base}{path}?{urllib.parse.urlencode({'worker_id': self.worker_id, 'attempt': attempt})}"
                request = HTTPRequest(
                    url, method="POST", body=b"", headers={"Content-Type": "application/octet-stream"},
                    request_timeout=seconds, connect_timeout=10, prepare_curl_callback=stream_from_file,
                )  # fmt: skip
                self.requests_sent += 1
                try:
                    response = await self.http.fetch(request, raise_error=False)
                except (CurlError, *_TRANSPORT_ERRORS) as exc:
                    response = None
                    problem = self._scrub(str(exc))
            if response is not None and response.code < 500 and response.code != 599:
                if response.code == 200:
                    return True
                log.warning("image archive refused: HTTP %d %s", response.code, self._error_text(response))
                return False
            if response is not None:
                problem = f"HTTP {response.code} {self._error_text(response)}"
            delay = backoff.next_delay()
            log.warning("cannot upload the image archive (%s); retrying in %.1fs", problem, delay)
            await asyncio.sleep(delay)

    async def report_build(self, result_url: str, attempt: str, success: bool, error: str | None) -> bool:
        """A build's verdict, retrying while the API is unreachable; False when refused (409:
        the build was taken back from this worker meanwhile)."""
        path = self.api_path(result_url)
        body: dict[str, Any] = {"success": success, **({"error": error} if error else {})}
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while True:
            try:
                params = {"worker_id": self.worker_id, "attempt": attempt}
                response = await self._call("POST", path, params, body)
            except Unreachable as exc:
                delay = backoff.next_delay()
                log.warning("cannot report the build (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            if response.code == 200:
                return True
            log.warning("build result dropped: HTTP %d %s", response.code, self._error_text(response))
            return False


def _report_body(
    result: str, success: bool, attempt: str | None, error: str | None, kind: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"result": result, "success": success}
    if attempt:
        body["attempt"] = attempt
    if error:
        body["error"] = error
    if kind:
        body["kind"] = kind
    return body


def _call_name(path: str) -> str:
    """The metrics' name for a request: /grading_job polls, /grading_job/<id> reports."""
    parts = path.strip("/").split("/")
    if parts[0] == "grading_job":
        return "report" if len(parts) > 1 else "poll"
    return {"worker_register": "register", "heartbeat": "heartbeat"}.get(parts[0], "other")


def _error_text(response: HTTPResponse) -> str:
    try:
        return str(json.loads(response.body or b"{}").get("error", ""))
    except (ValueError, AttributeError):
        return (response.body or b"")[:200].decode("utf-8", "replace")


class _KeepAliveClient(CurlAsyncHTTPClient):
    """Tornado's curl client with libcurl's connection cache as large as its handle pool, so that
    every connection in use can stay open for the next request. (By default libcurl keeps four
    idle connections per transfer running at the time one ends, which drops connections when a
    burst of reports ends together.)"""

    def initialize(self, max_clients: int = 10, defaults: dict[str, Any] | None = None) -> None:  # type: ignore[override]
        super().initialize(max_clients=max_clients, defaults=defaults)
        self._multi.setopt(pycurl.M_MAXCONNECTS, max_clients)

    def close(self) -> None:
        super().close()
        # Closing the handles of requests still in flight (a long poll, at a stop) makes libcurl
        # set a timer, which must not fire on the closed client.
        if self._timeout is not None:
            self.io_loop.remove_timeout(self._timeout)
            self._timeout = None


def _ignore_proxy_environment(curl: Any) -> None:
    # libcurl would follow http_proxy from the environment; the grader talks to its API directly,
    # as it did before it used libcurl.
    curl.setopt(pycurl.NOPROXY, "*")
