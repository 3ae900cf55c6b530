"""Course staff's side of the API (submit, start, status), over plain blocking HTTP.

start_run is a command-line tool waiting on one run: a blocking client keeps it simple.
Every failure becomes a ClientError whose message is one line a person can act on.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

# Students per request when reading a whole run (the API allows up to 1,000).
PAGE_SIZE = 1000


class ClientError(Exception):
    """The API could not be reached or refused the request; str() is the message to show."""


class RunClient:
    def __init__(self, api_url: str, token: str | None, timeout: float = 30.0) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise ClientError(f"--api-url must start with http:// or https://, got {api_url!r}")
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A JSON request; the JSON answer, or ClientError with a message a person can act on."""
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        return self._send(method, path, data, {"Content-Type": "application/json", **(headers or {})})

    def _send(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> dict[str, Any]:
        """A request with a body already encoded (JSON, a multipart form); the JSON answer."""
        request = urllib.request.Request(self.api_url + path, data=data, method=method)  # noqa: S310 - http(s) only, checked in __init__
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in headers.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            raise ClientError(self._explain(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach the Broadway API at {self.api_url}: {reason}") from None
        except ValueError:
            raise ClientError(f"the API at {self.api_url} did not answer with JSON; is that the right URL?") from None

    def _explain(self, exc: urllib.error.HTTPError) -> str:
        try:
            detail = str(json.loads(exc.read()).get("error", ""))
        except (ValueError, AttributeError, OSError):
            detail = ""
        if exc.code == 401:
            hint = "set --token or BROADWAY_CLIENT_TOKEN to the client token the API printed at start-up"
            return f"the API refused the client token (401 {detail}); {hint}"
        return f"the API answered {exc.code}: {detail or exc.reason}"

    def submit(self, config: dict[str, Any]) -> str:
        """Store a run; returns its id."""
        return str(self._request("POST", "/api/v1/grading_run", {"json_payload": json.dumps(config)})["id"])

    def start(self, run_id: str) -> None:
        self._request("POST", self._run_path(run_id))

    def status(self, run_id: str) -> dict[str, Any]:
        """The whole run in one answer (the seed's shape): every job, its stages and result."""
        return self._request("GET", self._run_path(run_id))

    def summary(self, run_id: str) -> dict[str, Any]:
        """The run's status and counts, no job list: cheap at any run size, for watching."""
        return self._request("GET", self._run_path(run_id) + "?summary=1")

    def results(self, run_id: str, page_size: int = PAGE_SIZE) -> dict[str, Any]:
        """The whole run, as status() gives it, read a page of students at a time.

        A run of 100,000 students is ~150 MB in one answer; pages keep each request small. An API
        without paging answers the whole run to the first request (no "page" key): that is used as is.
        """
        first = self._page(run_id, 0, page_size)
        if "page" not in first:
            return first
        students = list(first["student_statuses"])
        last = first
        while last["page"]["returned"] and len(students) < last["page"]["total"]:
            last = self._page(run_id, len(students), page_size)
            students += last["student_statuses"]
        body = {key: value for key, value in last.items() if key != "page"}
        body["student_statuses"] = students
        return body

    def _page(self, run_id: str, offset: int, limit: int) -> dict[str, Any]:
        return self._request("GET", f"{self._run_path(run_id)}?offset={offset}&limit={limit}")

    @staticmethod
    def _run_path(run_id: str) -> str:
        return f"/api/v1/grading_run/{urllib.parse.quote(run_id, safe='')}"
