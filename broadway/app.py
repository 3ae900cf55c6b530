"""make_app: the tornado Application, built from explicit collaborators (no globals)."""

from __future__ import annotations

import logging

import tornado.web

from broadway.config import Config
from broadway.dispatch import JobSignal
from broadway.handlers import default_handlers
from broadway.handlers.base import NotFoundHandler, Services
from broadway.liveness import Reaper
from broadway.redaction import redact
from broadway.scheduler import Scheduler
from broadway.store import Store
from broadway.tokens import Tokens

access_log = logging.getLogger("broadway.access")

# Graders poll, heartbeat and report all the time; their routine answers are DEBUG, so that an
# operator's log shows client activity and problems rather than thousands of heartbeats.
_GRADER_PATHS = ("/api/v1/heartbeat", "/api/v1/grading_job")


def log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if (status < 300 or status == 412) and handler.request.path.startswith(_GRADER_PATHS):
        level = logging.DEBUG
    if not access_log.isEnabledFor(level):
        return
    request = handler.request
    millis = 1000.0 * request.request_time()
    access_log.log(
        level, "%d %s %s (%s) %.1fms", status, request.method, redact(request.uri or ""), request.remote_ip, millis
    )


def make_app(config: Config, store: Store, tokens: Tokens) -> tornado.web.Application:
    jobs_signal = JobSignal()
    scheduler = Scheduler(store, on_jobs_queued=jobs_signal.notify, ceilings=config.stage_ceilings)
    reaper = Reaper(config, store, scheduler)
    services = Services(
        config=config, store=store, scheduler=scheduler, tokens=tokens, jobs_signal=jobs_signal, reaper=reaper
    )
    return tornado.web.Application(
        default_handlers,
        services=services,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=True,
    )
