"""The dashboard: an HTML page (no data in it) and the JSON it polls, behind the client token.

The pages are static shells: the script asks for a token once, keeps it in sessionStorage and
sends it as Authorization: Bearer to GET /api/v1/summary (once a second) and to the job
endpoint. No data is rendered on the server, so nothing needs escaping there, and a page
without a valid token shows nothing but the sign-in form.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import tornado.web

from broadway.courses import CallerKind, Owner, Scope
from broadway.handlers.base import APIHandler, needs_scope
from broadway.store.summary import SummaryStore

# The summary is computed at most this often per process, however many dashboards poll it.
SUMMARY_TTL_S = 1.0
# Counting a big run's jobs is a $group over all of them (~0.16 s at 100k): recount it less often.
BIG_RUN_STUDENTS = 2000
BIG_RUN_RECOUNT_S = 10.0
# The most of a stage's output the job page shows (its end: where the error usually is).
OUTPUT_TAIL_CHARS = 4000
# Results larger than this are parsed in a thread.
PARSE_IN_THREAD_CHARS = 256 * 1024
# Recent single jobs are found by a scan (no index on `kind` yet): not every second.
SINGLES_TTL_S = 5.0
# Finished runs' counts no longer change; keep this many.
MAX_CACHED_RUN_COUNTS = 500

# The page's own script and stylesheet only: no inline script can run, whatever data shows up.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class DashboardSummary:
    """What the dashboard shows, cached SUMMARY_TTL_S; shared by every viewer of this process."""

    def __init__(self, summary: SummaryStore) -> None:
        self.summary = summary
        self._value: dict[str, Any] | None = None
        self._at = -float("inf")
        self._lock = asyncio.Lock()
        # run id -> (monotonic time counted, counts, final)
        self._run_counts: dict[str, tuple[float, dict[str, int], bool]] = {}
        self._singles: list[dict[str, Any]] = []
        self._singles_at = -float("inf")

    async def get(self) -> dict[str, Any]:
        if self._value is not None and time.monotonic() - self._at < SUMMARY_TTL_S:
            return self._value
        async with self._lock:
            if self._value is None or time.monotonic() - self._at >= SUMMARY_TTL_S:
                self._value = await self._compute()
                self._at = time.monotonic()
            return self._value

    async def _compute(self) -> dict[str, Any]:
        now = time.time()
        queues = await self.summary.queue_depth()
        workers = await self.summary.workers_overview(now)
        runs = await self.summary.recent_runs()
        for run in runs:
            run["counts"] = await self._counts(run)
            counts = run["counts"]
            run["done"] = counts["succeeded"] + counts["failed"] + counts["cancelled"]
            run["total"] = sum(counts.values())
        if time.monotonic() - self._singles_at >= SINGLES_TTL_S:
            self._singles = await self.summary.recent_single_jobs()
            self._singles_at = time.monotonic()
        alive = [w for w in workers if w["alive"]]
        return {
            "now": now,
            "queues": queues,
            "workers_alive": len(alive),
            "slots": sum(w["slots"] for w in alive),
            "slots_in_use": sum(w["in_use"] for w in workers),
            "workers": workers,
            "runs": runs,
            "single_jobs": self._singles,
        }

    async def _counts(self, run: dict[str, Any]) -> dict[str, int]:
        cached = self._run_counts.get(run["id"])
        final = run["status"] not in ("created", "running")
        if cached is not None:
            at, counts, was_final = cached
            max_age = BIG_RUN_RECOUNT_S if run["n_students"] > BIG_RUN_STUDENTS else 0.0
            if was_final or time.monotonic() - at < max_age:
                return counts
        counts = await self.summary.run_job_counts(run["id"])
        if len(self._run_counts) >= MAX_CACHED_RUN_COUNTS:
            self._run_counts.clear()
        self._run_counts[run["id"]] = (time.monotonic(), counts, final)
        return counts


class SummaryHandler(APIHandler):
    @needs_scope(Scope.SUMMARY)
    async def get(self) -> None:
        """Queues, workers, runs with counts, recent single jobs: the dashboard's one poll.
        A course token sees its course's runs, jobs and queue (and the graders' capacity)."""
        dashboard: DashboardSummary = self.settings["dashboard"]
        summary = await dashboard.get()
        if self.caller.kind is not CallerKind.ADMIN:
            summary = for_course(summary, self.caller.course)
        self.write_json(summary)


class DashboardJobHandler(APIHandler):
    @needs_scope(Scope.SUMMARY)
    async def get(self, job_id_text: str) -> None:
        """One job for the job page: its fields and each stage's exit code and output tail."""
        dashboard: DashboardSummary = self.settings["dashboard"]
        job = await dashboard.summary.job(job_id_text)
        owner = Owner(course=job["course"], subject=job.get("subject")) if job else None
        self.owned(owner, f"no job with id {job_id_text[:40]!r}")
        assert job is not None
        result = job.pop("result")
        job["stages"], job["result_text"] = await stage_results(result)
        self.write_json(job)


def for_course(summary: dict[str, Any], course: str) -> dict[str, Any]:
    """The shared summary cut down to one course's runs, single jobs and queue.
    Workers (names, slots, what is running where) are the deployment's: a course sees totals only."""
    return summary | {
        "queues": [q for q in summary["queues"] if q.get("course") == course],
        "workers": [],
        "runs": [r for r in summary["runs"] if r.get("course") == course],
        "single_jobs": [j for j in summary["single_jobs"] if j.get("course") == course],
    }


async def stage_results(result: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """A grader's result as stage rows (exit code, timed out, output tail); a result that is not
    the stage list (an older grader's free text) comes back as text, its tail only."""
    if not result:
        return [], None
    try:
        parsed = (
            await asyncio.to_thread(json.loads, result) if len(result) > PARSE_IN_THREAD_CHARS else json.loads(result)
        )
    except ValueError:
        return [], _tail(result)
    stages = parsed.get("stages") if isinstance(parsed, dict) else parsed if isinstance(parsed, list) else None
    if not isinstance(stages, list):
        return [], _tail(result)
    rows = []
    for stage in stages:
        if not isinstance(stage, dict):
            continue
        output = stage.get("output")
        rows.append({
            "image": stage.get("image"),
            "exit_code": stage.get("exit_code"),
            "timed_out": bool(stage.get("timed_out")),
            "oom_killed": bool(stage.get("oom_killed")),
            "duration_s": stage.get("duration_s"),
            "output_tail": _tail(output) if isinstance(output, str) else None,
            "output_truncated": bool(stage.get("output_truncated")) or (
                isinstance(output, str) and len(output) > OUTPUT_TAIL_CHARS
            ),
        })  # fmt: skip
    return rows, None


def _tail(text: str) -> str:
    return text[-OUTPUT_TAIL_CHARS:]


class DashboardPageHandler(tornado.web.RequestHandler):
    """The HTML shell of the overview (page="overview") or of one job's page (page="job")."""

    def initialize(self) -> None:
        # The request log labels requests by path_args, which Tornado sets only once the body
        # parsed: a request refused before that (a bad multipart body) had none.
        self.path_args, self.path_kwargs = [], {}

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Errors are JSON here too, like every other answer of the API that is not the page.
        if status_code == 405:
            self.set_header("Allow", "GET")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": self._reason, "status": status_code}))

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def get(self, job_id: str | None = None) -> None:
        # The template escapes job_id (autoescape); the script reads it from a data attribute.
        self.render("dashboard.html", page="job" if job_id is not None else "overview", job_id=job_id or "")


default_handlers = [
    (r"/", DashboardPageHandler),
    (r"/dashboard/?", DashboardPageHandler),
    (r"/dashboard/job/([^/]+)", DashboardPageHandler),
    (r"/api/v1/summary/?", SummaryHandler),
    (r"/api/v1/summary/job/([^/]+)", DashboardJobHandler),
]
