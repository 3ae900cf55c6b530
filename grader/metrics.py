"""The grader's Prometheus metrics, served on --metrics-port (off by default).

Hook functions for the daemon, the client and the executor: each is a counter add or a
histogram observe, safe from any thread (the executor runs in a thread pool), never raising.
Labels stay bounded: `image` is a stage's image name (a course uses a handful), `call` and
`operation` are fixed words.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

_STAGE_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
API_CALLS = ("register", "poll", "heartbeat", "report")

STAGE_DURATION = Histogram(
    "broadway_grader_stage_duration_seconds",
    "Wall-clock seconds a stage's container ran, by image.",
    ["image"],
    buckets=_STAGE_BUCKETS,
    registry=REGISTRY,
)
STAGES = Counter(
    "broadway_grader_stages",
    "Stages run, by image and result (passed, failed, timed_out).",
    ["image", "result"],
    registry=REGISTRY,
)
CONTAINERS_RUNNING = Gauge(
    "broadway_grader_containers_running", "Stage containers this grader has running now.", registry=REGISTRY
)
JOBS_ABORTED = Counter(
    "broadway_grader_jobs_aborted",
    "Jobs the API cancelled while they ran, whose containers this grader killed (not reported).",
    registry=REGISTRY,
)
JOBS_RUNNING = Gauge("broadway_grader_jobs_running", "Jobs this grader is running now.", registry=REGISTRY)
DOCKER_ERRORS = Counter(
    "broadway_grader_docker_errors",
    "Docker engine errors by operation (create, start, pull, ping, remove, run).",
    ["operation"],
    registry=REGISTRY,
)
IMAGE_PULLS = Counter(
    "broadway_grader_image_pulls", "Image downloads by outcome (ok, failed).", ["outcome"], registry=REGISTRY
)
IMAGE_PULL_DURATION = Histogram(
    "broadway_grader_image_pull_duration_seconds",
    "Seconds an image download took.",
    buckets=_STAGE_BUCKETS,
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "broadway_grader_api_requests",
    "Calls to the API by kind (register, poll, heartbeat, report) and outcome (ok, failed).",
    ["call", "outcome"],
    registry=REGISTRY,
)
API_DURATION = Histogram(
    "broadway_grader_api_request_duration_seconds",
    "Seconds an API call took (a long poll included), by kind.",
    ["call"],
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)

for _call in API_CALLS:
    API_REQUESTS.labels(_call, "ok")
    API_REQUESTS.labels(_call, "failed")
for _outcome in ("ok", "failed"):
    IMAGE_PULLS.labels(_outcome)


# -- hooks -------------------------------------------------------------------------------------


def stage_finished(image: str, duration_s: float, exit_code: int | None, timed_out: bool) -> None:
    """A stage's container ended (executor, after _watch)."""
    result = "timed_out" if timed_out else "passed" if exit_code == 0 else "failed"
    STAGE_DURATION.labels(image).observe(max(0.0, duration_s))
    STAGES.labels(image, result).inc()


def container_started() -> None:
    CONTAINERS_RUNNING.inc()


def container_removed() -> None:
    CONTAINERS_RUNNING.dec()


def job_started() -> None:
    JOBS_RUNNING.inc()


def job_ended() -> None:
    JOBS_RUNNING.dec()


def job_aborted() -> None:
    """A running job was cancelled (the heartbeat's `abort`): killed, not reported."""
    JOBS_ABORTED.inc()


def docker_error(operation: str) -> None:
    DOCKER_ERRORS.labels(operation).inc()


def image_pulled(ok: bool, duration_s: float) -> None:
    IMAGE_PULLS.labels("ok" if ok else "failed").inc()
    IMAGE_PULL_DURATION.observe(max(0.0, duration_s))


def api_call(call: str, ok: bool, duration_s: float | None = None) -> None:
    """One register/poll/heartbeat/report call; ok=False when unreachable or refused."""
    API_REQUESTS.labels(call, "ok" if ok else "failed").inc()
    if duration_s is not None:
        API_DURATION.labels(call).observe(max(0.0, duration_s))


# -- serving ---------------------------------------------------------------------------------


class MetricsServer:
    """The HTTP endpoint (any path answers the exposition), in a daemon thread of its own."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve REGISTRY on host:port (port 0: a free one; see .port). Raises OSError if taken."""
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    metrics_server = MetricsServer(server, thread)
    log.info("metrics on http://%s:%d/metrics", host, metrics_server.port)
    return metrics_server
