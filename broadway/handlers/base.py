"""The base of every API handler: argument decoding, JSON errors, authentication and authorization.

Authorization is deny by default, in the style of JupyterHub's @needs_scope: before a handler
method runs, prepare() looks for what the method (or its class) declared --
- @needs_scope(Scope.RUNS) etc.: a client caller (admin, course token, JWT subject) holding the scope;
  the caller is then `self.caller`, and resources it does not own answer 404 (`self.owned(...)`);
- @public: anyone (health, the OpenAPI document);
- the class attribute `access = SELF_AUTHENTICATED`: the handler checks credentials of its own
  (graders' worker ids and cluster token, the metrics token).
A method that declares nothing answers 401 without a valid token and 403 with one: forgetting the
declaration locks the endpoint instead of opening it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import tornado.web

from broadway.auth import Authenticator, AuthError, load_jwt_verifier
from broadway.callbacks.deliverer import Deliverer
from broadway.config import Config
from broadway.courses import DEFAULT_COURSE, Caller, Owner, Scope
from broadway.dispatch import JobSignal
from broadway.holding_pen import HoldingPen
from broadway.liveness import Reaper
from broadway.models import Worker
from broadway.orca_queue import OrcaQueue
from broadway.redaction import redact
from broadway.scheduler import Scheduler
from broadway.store import Store, is_store_failure
from broadway.store.courses import CourseStore
from broadway.store.rate_limits import RateLimitStore
from broadway.tokens import Tokens, digest

log = logging.getLogger(__name__)

# Bodies larger than this are parsed in a thread, so a big submission does not stall heartbeats.
PARSE_IN_THREAD_BYTES = 256 * 1024

_MISSING = object()

F = TypeVar("F", bound=Callable[..., Any])

# What a handler may declare instead of a scope (see the module docstring).
PUBLIC = "public"
SELF_AUTHENTICATED = "self-authenticated"
_ACCESS_ATTR = "_broadway_access"


def needs_scope(scope: Scope) -> Callable[[F], F]:
    """Declare that a handler method needs a client caller holding `scope`."""

    def mark(method: F) -> F:
        setattr(method, _ACCESS_ATTR, scope)
        return method

    return mark


def public(method: F) -> F:
    """Declare that a handler method needs no credentials at all."""
    setattr(method, _ACCESS_ATTR, PUBLIC)
    return method


def declared_access(handler_class: type, method_name: str) -> Scope | str | None:
    """What a handler class's method declared: a Scope, PUBLIC, SELF_AUTHENTICATED, or None (denied)."""
    method = getattr(handler_class, method_name, None)
    return getattr(method, _ACCESS_ATTR, None) or getattr(handler_class, "access", None)


async def parse_json(text: str | bytes, what: str) -> Any:
    """Parse JSON from a request, in a thread when it is large; 400 naming `what` when it is not JSON."""
    try:
        if len(text) > PARSE_IN_THREAD_BYTES:
            return await asyncio.to_thread(json.loads, text)
        return json.loads(text)
    except RecursionError:
        raise ApiError(400, f"{what} is JSON nested too deeply") from None
    except ValueError as e:  # includes UnicodeDecodeError for invalid UTF-8
        raise ApiError(400, f"{what} is not valid JSON: {_short(str(e))}") from None


@dataclass(frozen=True)
class Services:
    """What handlers work with; put in the Application settings by make_app."""

    config: Config
    store: Store
    scheduler: Scheduler
    tokens: Tokens
    jobs_signal: JobSignal
    reaper: Reaper
    # Sends callbacks; call deliverer.notify() after recording a pending delivery. None until
    # the server starts it (and in apps built without one).
    deliverer: Deliverer | None = None

    # Built on first use (make_app builds Services without them); cached_property writes the
    # instance dict directly, which a frozen dataclass allows.
    @cached_property
    def courses(self) -> CourseStore:
        return CourseStore(self.store.db)

    @cached_property
    def rate_limits(self) -> RateLimitStore:
        return RateLimitStore(self.store.db)

    @cached_property
    def holding_pen(self) -> HoldingPen:
        """Orca jobs waiting for their grader image or their release time (broadway/holding_pen.py)."""
        return HoldingPen(self.store, self.config.callback_max_age_s, self.jobs_signal.notify, self._callback_due)

    @cached_property
    def orca_queue(self) -> OrcaQueue:
        return OrcaQueue(self.config, self.store, self.holding_pen)

    def _callback_due(self) -> None:
        if self.deliverer is not None:
            self.deliverer.notify()

    @cached_property
    def authenticator(self) -> Authenticator:
        config = self.config
        # The key was read and checked once at start (Config.from_args); this reads it again, once.
        verifier = load_jwt_verifier(config.jwt_key, config.jwt_audience, config.jwt_issuer)
        return Authenticator(self.tokens.client, self.courses, verifier)


class ApiError(tornado.web.HTTPError):
    """An expected failure: answered as {"error": message} with the status code."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.message = message
        # Sent with the error (send_error clears headers set before the raise).
        self.headers = headers or {}


class APIHandler(tornado.web.RequestHandler):
    services: Services
    _json_body: Any
    _caller: Caller | None
    # A whole handler's declaration (SELF_AUTHENTICATED, PUBLIC); None: each method declares.
    access: str | None = None

    def initialize(self) -> None:
        self.services = self.settings["services"]
        self._json_body = _MISSING
        self._caller = None
        # The request log labels requests by path_args, which Tornado sets only once the body
        # parsed: a request refused before that (a bad multipart body) had none.
        self.path_args, self.path_kwargs = [], {}

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    def body_limit(self) -> int:
        """The largest body this handler takes (a JSON 413 beyond it)."""
        return self.services.config.max_body_bytes

    async def prepare(self) -> None:
        length = len(self.request.body)
        if length > (limit := self.body_limit()):
            raise ApiError(413, f"request body is {length} bytes; the limit is {limit}")
        await self.authorize()
        if self._looks_like_json():
            self._json_body = await parse_json(self.request.body, "request body")

    def _looks_like_json(self) -> bool:
        if not self.request.body.strip():
            return False
        content_type = self.request.headers.get("Content-Type", "")
        # curl -d sends JSON as form-encoded; treat a body that starts like JSON as JSON.
        return "json" in content_type or self.request.body.lstrip()[:1] in (b"{", b"[")

    # -- arguments ---------------------------------------------------------------------------

    def arg(self, name: str) -> Any:
        """An argument from the query string, a form body, or a JSON body, in that order; None if absent."""
        for source in (self.request.query_arguments, self.request.body_arguments):
            values = source.get(name)
            if values:
                try:
                    return values[0].decode("utf-8")
                except UnicodeDecodeError:
                    raise ApiError(400, f"argument {name!r} is not valid UTF-8") from None
        body = self.json_body
        if isinstance(body, dict):
            return body.get(name)
        return None

    @property
    def json_body(self) -> Any:
        return None if self._json_body is _MISSING else self._json_body

    def required_str(self, name: str) -> str:
        value = self.arg(name)
        if value is None or value == "":
            raise ApiError(400, f"missing argument {name!r}")
        if not isinstance(value, str):
            raise ApiError(400, f"argument {name!r} must be a string")
        return value

    # -- auth --------------------------------------------------------------------------------

    def bearer_token(self) -> str | None:
        """The client token: `Authorization: Bearer <token>`, else Orca's `x-api-key: <token>`
        (Orca's clients send a course token or the admin client token that way)."""
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        api_key = self.request.headers.get("x-api-key", "").strip()
        return api_key or None

    async def authorize(self) -> None:
        """Deny by default: let the request through only as its method (or class) declared."""
        method = (self.request.method or "").lower()
        if method.upper() not in self.allowed_methods():
            return  # Tornado answers 405 for it
        access = declared_access(type(self), method)
        if access in (PUBLIC, SELF_AUTHENTICATED):
            return
        caller = await self._resolve_caller()
        if not isinstance(access, Scope):
            log.error("%s.%s declares no access: refused", type(self).__name__, method)
            raise ApiError(403, "this endpoint grants access to no one")
        if access not in caller.scopes:
            raise ApiError(403, f"{caller.kind.value} tokens cannot use this endpoint (it needs {access.value!r})")
        self._caller = caller

    async def _resolve_caller(self) -> Caller:
        try:
            return await self.services.authenticator.caller(self.bearer_token())
        except AuthError as e:
            raise ApiError(401, str(e), headers={"WWW-Authenticate": 'Bearer realm="broadway"'}) from None

    @property
    def caller(self) -> Caller:
        """Who is calling (set by authorize() for a method with @needs_scope)."""
        if self._caller is None:
            raise RuntimeError(f"{type(self).__name__} uses self.caller without @needs_scope")
        return self._caller

    def owned(self, owner: Owner | None, not_found: str) -> None:
        """404 (never 403: existence is not leaked) unless the caller may see a resource of this owner."""
        if owner is None or not self.caller.sees(owner):
            raise ApiError(404, not_found)

    async def admit_submission(self) -> None:
        """The caller's course's token bucket: one submission's token, or 429 with Retry-After
        before anything is stored. Courses without a `rate` (and the default course) are not limited."""
        course_name = self.caller.course
        if course_name == DEFAULT_COURSE:
            return
        course = await self.services.courses.get(course_name)
        if course is None or course.rate is None:
            return
        take = await self.services.rate_limits.take(course_name, course.rate)
        if not take.allowed:
            retry_after = max(1, math.ceil(take.retry_after_s))
            raise ApiError(
                429,
                f"course {course_name} submits at most {course.rate.per_second:g} a second (burst "
                f"{course.rate.burst}): try again in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )

    def course_of_caller(self) -> str:
        """The course a caller's course-wide resources (assignments) live in; the admin's is the default."""
        return self.caller.course if self._caller is not None else DEFAULT_COURSE

    async def require_worker(self, worker_id: str) -> Worker:
        """Grader endpoints: a registered, live worker_id, else 404 so that the grader registers again."""
        worker = await self.services.store.workers.get_alive(digest(worker_id))
        if worker is None:
            raise ApiError(404, "unknown worker (never registered, or declared dead): register again")
        return worker

    # -- responses ---------------------------------------------------------------------------

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info and is_store_failure(exc_info[1]):
            status_code = 503
        super().send_error(status_code, **kwargs)

    def _request_summary(self) -> str:
        # Tornado puts this in its own log lines (uncaught exceptions, HTTPError warnings): the
        # query string may carry a token or a worker id.
        return f"{self.request.method} {redact(self.request.uri or '')} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if is_store_failure(value):
            log.warning("%s %s: store unavailable: %s", self.request.method, self.request.path, value)
        elif isinstance(value, tornado.web.HTTPError):
            if not isinstance(value, ApiError):
                super().log_exception(typ, value, tb)  # a warning line with the redacted summary
        else:
            # Tornado's own version adds repr(self.request), whose uri is not redacted.
            log.error("uncaught exception on %s", self._request_summary(), exc_info=(typ, value, tb))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = exc.message
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif exc is not None and is_store_failure(exc):
            message = "the store is unavailable; try again shortly"
            self.set_header("Retry-After", "1")
        elif status_code >= 500:
            message = "internal server error"
        else:
            message = self._reason
        if status_code == 405:  # RFC 9110: say what is allowed
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": message, "status": status_code}))

    def allowed_methods(self) -> list[str]:
        """The HTTP methods this handler implements."""
        base = tornado.web.RequestHandler
        return [m for m in base.SUPPORTED_METHODS if getattr(type(self), m.lower()) is not getattr(base, m.lower())]


class NotFoundHandler(APIHandler):
    """Unknown paths answer JSON too."""

    async def prepare(self) -> None:
        raise ApiError(404, f"no such endpoint: {self.request.method} {self.request.path}")


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
