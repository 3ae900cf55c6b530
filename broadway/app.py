"""make_app: the tornado Application, built from explicit collaborators (no globals)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import tornado.web

from broadway import metrics
from broadway.callbacks.targets import TargetPolicy
from broadway.config import Config
from broadway.dispatch import JobSignal
from broadway.handlers import default_handlers
from broadway.handlers.base import NotFoundHandler, Services
from broadway.handlers.dashboard import DashboardSummary
from broadway.liveness import Reaper
from broadway.metered_scheduler import MeteredScheduler
from broadway.redaction import redact
from broadway.store import Store
from broadway.store.summary import SummaryStore
from broadway.tokens import Tokens

access_log = logging.getLogger("broadway.access")

PACKAGE_DIR = Path(__file__).parent

# Graders poll, heartbeat and report all the time; their routine answers are DEBUG, so that an
# operator's log shows client activity and problems rather than thousands of heartbeats.
# So are the dashboard's once-a-second polls and Prometheus's scrapes.
_ROUTINE_PATHS = ("/api/v1/heartbeat", "/api/v1/grading_job", "/api/v1/summary", "/metrics", "/static/")

_GROUP = re.compile(r"\((?:[^()\\]|\\.)*\)")
# What a path argument is, named by the path segment before it.
_ARG_NAMES = {"grading_run": "run_id", "grading_job": "job_id", "job": "job_id", "assignment": "assignment_id"}


def route_template(pattern: str) -> str:
    """A route's regex as the label Prometheus and JSON logs show: groups become {run_id}-style names."""
    out = []
    for index, piece in enumerate(_GROUP.split(pattern)):
        out.append(piece)
        if index < len(_GROUP.findall(pattern)):
            segment = piece.rstrip("/").rsplit("/", 1)[-1]
            out.append("{" + _ARG_NAMES.get(segment, "id") + "}")
    text = "".join(out).replace("/?", "").replace("\\.", ".").rstrip("$")
    return text or "/"


class Routes:
    """Handler class -> its routes' (regex, template, argument names), for request labels."""

    def __init__(self, handlers: list[Any]) -> None:
        self._by_class: dict[type, list[tuple[re.Pattern[str], str, list[str]]]] = {}
        for pattern, handler_class, *_ in handlers:
            template = route_template(pattern)
            names = re.findall(r"\{(\w+)\}", template)
            self._by_class.setdefault(handler_class, []).append((re.compile(pattern + "$"), template, names))

    def label(self, handler: tornado.web.RequestHandler) -> tuple[str, dict[str, str]]:
        """The route template a request matched, and its path arguments by name (run_id, job_id)."""
        if isinstance(handler, tornado.web.StaticFileHandler):
            return "/static/{path}", {}
        if isinstance(handler, NotFoundHandler):
            return "unmatched", {}
        routes = self._by_class.get(type(handler), [])
        for regex, template, names in routes:
            if len(routes) == 1 or regex.match(handler.request.path):
                args = dict(zip(names, (str(a) for a in handler.path_args), strict=False))
                return template, args
        return "other", {}


def log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    request = handler.request
    seconds = request.request_time()
    routes: Routes | None = handler.settings.get("routes")
    route, path_args = routes.label(handler) if routes else ("other", {})
    metrics.http_request(route, request.method or "?", status, seconds)
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if (status < 300 or status == 412) and request.path.startswith(_ROUTINE_PATHS):
        level = logging.DEBUG
    if not access_log.isEnabledFor(level):
        return
    # Structured fields for --log-format json (the text format shows the message alone).
    extra: dict[str, Any] = {
        "http": {"method": request.method, "route": route, "status": status, "ms": round(1000 * seconds, 1)}
    }
    extra |= {k: v for k, v in path_args.items() if k in ("run_id", "job_id")}
    access_log.log(
        level, "%d %s %s (%s) %.1fms", status, request.method, redact(request.uri or ""), request.remote_ip,
        1000.0 * seconds, extra=extra,
    )  # fmt: skip


def make_app(config: Config, store: Store, tokens: Tokens) -> tornado.web.Application:
    jobs_signal = JobSignal()
    scheduler = MeteredScheduler(
        store,
        on_jobs_queued=jobs_signal.notify,
        ceilings=config.stage_ceilings,
        callback_policy=TargetPolicy.from_strings(config.callback_allow_networks),
        callback_max_age_s=config.callback_max_age_s,
    )
    reaper = Reaper(config, store, scheduler)
    services = Services(
        config=config, store=store, scheduler=scheduler, tokens=tokens, jobs_signal=jobs_signal, reaper=reaper
    )
    summary = SummaryStore(store.db)
    return tornado.web.Application(
        default_handlers,
        services=services,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=True,
        routes=Routes(list(default_handlers)),
        dashboard=DashboardSummary(summary),
        store_gauges=metrics.StoreGauges(summary),
        template_path=str(PACKAGE_DIR / "templates"),
        static_path=str(PACKAGE_DIR / "static"),
        xsrf_cookies=False,
    )
