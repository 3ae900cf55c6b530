"""The API's Prometheus metrics: one registry per process, the metric objects, and hook functions.

Counters and histograms are process-wide (as Prometheus client libraries keep them): each API
process serves its own at GET /metrics, and Prometheus sums them across processes. Gauges that
need a store count (queue depth, workers) come from StoreGauges, one per application, refreshed
at most once a second however often it is scraped, so a dozen scrapers cost one query a second.

Hooks are plain functions so that lifecycle code calls one line (`metrics.jobs_requeued(n)`)
and needs no registry of its own; each is cheap (a dict lookup and an add) and never raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pymongo import monitoring

from broadway import __version__
from broadway.models import Job, JobStatus

log = logging.getLogger(__name__)

# Jobs carry no course yet; every job is in this one until courses arrive.
DEFAULT_COURSE = "default"
# How long a computed gauge value is served before the store is asked again.
GAUGE_TTL_S = 1.0

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

# Grading jobs wait from seconds to hours (a 100k-student run); they run from a second to an hour.
_JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

OUTCOMES = ("succeeded", "failed", "failed-infrastructure", "cancelled", "requeued")

BUILD_INFO = Gauge("broadway_build_info", "Always 1; the version in a label.", ["version"], registry=REGISTRY)
JOBS_FINISHED = Counter(
    "broadway_jobs_finished",
    "Jobs that ended an attempt, by outcome: succeeded, failed (the student's result), failed-infrastructure "
    "(worker died too often, image missing, Docker error), cancelled, requeued (worker lost; tried again).",
    ["outcome", "course"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "broadway_job_queue_wait_seconds",
    "Seconds a finished job waited in the queue before a grader claimed it (its last attempt).",
    ["course"],
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
RUN_TIME = Histogram(
    "broadway_job_run_seconds",
    "Seconds from a grader's claim to the job's result, for jobs a grader reported.",
    ["course"],
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "broadway_http_request_duration_seconds",
    "HTTP requests by route template, method and status code.",
    ["route", "method", "code"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
STORE_DURATION = Histogram(
    "broadway_store_operation_duration_seconds",
    "Store (MongoDB wire) commands by command name, failed ones included.",
    ["command"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "broadway_store_operation_errors", "Store commands that failed, by command name.", ["command"], registry=REGISTRY
)
STORE_RESTARTS = Counter(
    "broadway_embedded_store_restarts", "Times the embedded store died and was restarted.", registry=REGISTRY
)
CALLBACKS = Counter(
    "broadway_callback_deliveries",
    "Callback delivery attempts by outcome (delivered, retry, give_up).",
    ["outcome"],
    registry=REGISTRY,
)
CALLBACK_DURATION = Histogram(
    "broadway_callback_delivery_duration_seconds",
    "Seconds a callback delivery attempt took, by outcome.",
    ["outcome"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)

BUILD_INFO.labels(__version__).set(1)
for _outcome in OUTCOMES:
    JOBS_FINISHED.labels(_outcome, DEFAULT_COURSE)
QUEUE_WAIT.labels(DEFAULT_COURSE)
RUN_TIME.labels(DEFAULT_COURSE)


def course_of(job: Job) -> str:
    return str(getattr(job, "course", None) or DEFAULT_COURSE)


def outcome_of(job: Job) -> str:
    """How a job in a final status ended, as the outcome label says it."""
    if job.status is JobStatus.SUCCEEDED:
        return "succeeded"
    if job.status is JobStatus.CANCELLED:
        return "cancelled"
    if (job.error or "").startswith("infrastructure"):
        return "failed-infrastructure"
    return "failed"


# -- hooks -------------------------------------------------------------------------------------


def job_finished(job: Job) -> None:
    """A job reached a final status (called once per job, by whoever made it final)."""
    try:
        course = course_of(job)
        JOBS_FINISHED.labels(outcome_of(job), course).inc()
        if job.queued_at and job.started_at and job.started_at >= job.queued_at:
            QUEUE_WAIT.labels(course).observe(job.started_at - job.queued_at)
        if job.started_at and job.finished_at and job.finished_at >= job.started_at and job.worker:
            RUN_TIME.labels(course).observe(job.finished_at - job.started_at)
    except Exception:  # metrics must never break a report
        log.exception("metrics: job_finished")


def jobs_requeued(n: int, course: str = DEFAULT_COURSE) -> None:
    """n jobs went back to the queue because their worker was lost."""
    if n > 0:
        JOBS_FINISHED.labels("requeued", course).inc(n)


def jobs_cancelled(n: int, course: str = DEFAULT_COURSE) -> None:
    """n jobs were cancelled (a run's, or one job)."""
    if n > 0:
        JOBS_FINISHED.labels("cancelled", course).inc(n)


def callback_attempt(outcome: str, duration_s: float) -> None:
    """One callback delivery attempt ended with this outcome after duration_s seconds."""
    CALLBACKS.labels(outcome).inc()
    CALLBACK_DURATION.labels(outcome).observe(max(0.0, duration_s))


def embedded_store_restarted() -> None:
    STORE_RESTARTS.inc()


def http_request(route: str, method: str, code: int, duration_s: float) -> None:
    HTTP_DURATION.labels(route, method, str(code)).observe(duration_s)


class StoreCommandMetrics(monitoring.CommandListener):
    """Every store command's latency and failures, from the driver's own timing.

    Called synchronously by PyMongo on the event loop's thread: an observe is a few
    microseconds, nothing more happens here.
    """

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        STORE_DURATION.labels(event.command_name).observe(event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        STORE_DURATION.labels(event.command_name).observe(event.duration_micros / 1e6)
        STORE_ERRORS.labels(event.command_name).inc()


# -- gauges from the store -----------------------------------------------------------------------


class StoreGauges(Collector):
    """Queue depth, running jobs, workers and slots: counted in the store at most once a second.

    refresh() is awaited by the /metrics handler before rendering; collect() (synchronous, as
    prometheus-client calls it) serves the last values. Concurrent scrapes share one refresh.
    """

    def __init__(self, summary: Any, ttl_s: float = GAUGE_TTL_S) -> None:
        self.summary = summary  # broadway.store.summary.SummaryStore
        self.ttl_s = ttl_s
        self._at = -float("inf")
        self._lock = asyncio.Lock()
        self._queues: list[dict[str, Any]] = []
        self._workers: dict[str, int] = {}
        self._store_up = 0
        self.refreshes = 0

    async def refresh(self) -> None:
        if time.monotonic() - self._at < self.ttl_s:
            return
        async with self._lock:
            if time.monotonic() - self._at < self.ttl_s:
                return
            try:
                self._queues = await self.summary.queue_depth()
                self._workers = await self.summary.worker_totals()
                self._store_up = 1
            except Exception as e:  # keep the last values; broadway_store_up says why they are stale
                log.warning("metrics: store counts unavailable: %s", e)
                self._store_up = 0
            self._at = time.monotonic()
            self.refreshes += 1

    def collect(self) -> Iterable[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("broadway_jobs", "Jobs queued or running now, by course.", labels=["status", "course"])
        seen = set()
        for row in self._queues:
            seen.add(row["course"])
            jobs.add_metric(["queued", row["course"]], row["queued"])
            jobs.add_metric(["running", row["course"]], row["running"])
        if DEFAULT_COURSE not in seen:
            jobs.add_metric(["queued", DEFAULT_COURSE], 0)
            jobs.add_metric(["running", DEFAULT_COURSE], 0)
        yield jobs
        w = self._workers
        yield GaugeMetricFamily("broadway_workers_alive", "Graders alive (leased).", value=w.get("alive", 0))
        yield GaugeMetricFamily("broadway_worker_slots", "Job slots of the live graders.", value=w.get("slots", 0))
        yield GaugeMetricFamily("broadway_worker_slots_in_use", "Slots holding a job now.", value=w.get("in_use", 0))
        yield GaugeMetricFamily(
            "broadway_store_up", "1 if the last store count succeeded, else 0.", value=self._store_up
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


def exposition(gauges: StoreGauges | None) -> bytes:
    """The Prometheus text format of this process's metrics (and the app's store gauges)."""
    text = generate_latest(REGISTRY)
    if gauges is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(gauges)
        text += generate_latest(registry)
    return text
