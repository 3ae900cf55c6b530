"""Grader endpoints for joining the cluster and staying alive in it."""

from __future__ import annotations

import logging

from broadway.handlers.base import SELF_AUTHENTICATED, ApiError, APIHandler
from broadway.liveness import worker_label
from broadway.tokens import digest, new_secret, same_secret

log = logging.getLogger(__name__)

MAX_SLOTS = 64


class WorkerRegisterHandler(APIHandler):
    # A grader's endpoint: it checks its own credentials (cluster token, worker id), not a client's.
    access = SELF_AUTHENTICATED

    async def get(self) -> None:
        """Register with the cluster token; answers a fresh worker id and the heartbeat interval."""
        token = self.arg("token") or self.bearer_token()
        if not token:
            raise ApiError(400, "missing argument 'token' (the cluster token)")
        if not isinstance(token, str) or not same_secret(token, self.services.tokens.cluster):
            raise ApiError(401, "wrong cluster token")
        name = self.arg("name") or self.arg("hostname") or ""
        if not isinstance(name, str) or len(name) > 255:
            raise ApiError(400, "argument 'name' must be a string of at most 255 characters")
        slots_arg = self.arg("slots")
        slots = _int_arg(slots_arg, "slots", default=1, low=1, high=MAX_SLOTS)
        worker_id = new_secret()
        # `slots` is additive to the seed: a grader naming it is ours, which heartbeats while it
        # works. One that does not is treated as the 2018 grader (legacy: see liveness.py) until
        # a heartbeat names its jobs. Known here, a grader killed before its first heartbeat has
        # its job requeued after one worker timeout, not after the job's whole deadline.
        legacy = slots_arg is None
        # Additive: `build=true` from a grader started with --build, which also builds grader images.
        build = _bool_arg(self.arg("build"), "build")
        timeout = self.services.config.effective_worker_timeout
        worker = await self.services.store.workers.register(digest(worker_id), name, slots, timeout, legacy, build)
        # Never log the id itself: it is the worker's credential. The digest prefix identifies it.
        log.info(
            "worker %s registered with %d slot(s)%s%s", worker_label(worker), slots,
            " (legacy grader)" if legacy else "", " (builds images)" if build else "",
        )  # fmt: skip
        self.write_json({"worker_id": worker_id, "heartbeat": self.services.config.heartbeat_interval})

    post = get


class HeartbeatHandler(APIHandler):
    # A grader's endpoint: it checks its own credentials (cluster token, worker id), not a client's.
    access = SELF_AUTHENTICATED

    async def post(self) -> None:
        """Extend the worker's lease; 404 tells a grader it is unknown and must register again.

        A worker declared dead is revived (alive, holding no job) rather than told 404: the 2018
        grader never registers again, and would heartbeat on 404 in a tight loop.
        """
        worker_id = self.required_str("worker_id")
        running = self._running_jobs()
        services = self.services
        ref = digest(worker_id)
        timeout = services.config.effective_worker_timeout
        worker = await services.store.workers.heartbeat(ref, timeout, names_jobs=running is not None)
        if worker is None:
            dead = await services.store.workers.get(ref)
            worker = await services.reaper.revive(dead) if dead is not None else None
        if worker is None:
            raise ApiError(404, "unknown worker (never registered): register again")
        answer: dict[str, list[str]] = {}
        if running is not None:
            await services.reaper.reconcile(worker, running)
        if running:
            # Jobs cancelled while running: the grader kills their containers (the 2018 grader,
            # which names no jobs, runs them to the end and has its report refused).
            answer["abort"] = await services.store.jobs.cancelled_among(running)
        self.write_json(answer)

    def _running_jobs(self) -> frozenset[str] | None:
        """Additive to the seed: `jobs`, the ids of the jobs the grader is running (a JSON list or
        comma-separated), lets the API take back jobs whose claim never reached the grader."""
        value = self.arg("jobs")
        if value is None:
            return None
        if isinstance(value, str):
            value = [part for part in value.split(",") if part]
        if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 64 for v in value):
            raise ApiError(400, "argument 'jobs' must be a list of job ids")
        return frozenset(value)


def _bool_arg(value: object, name: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ApiError(400, f"argument {name!r} must be true or false")


def _int_arg(value: object, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ApiError(400, f"argument {name!r} must be an integer") from None
    if not low <= number <= high:
        raise ApiError(400, f"argument {name!r} must be between {low} and {high}")
    return number


default_handlers = [
    (r"/api/v1/worker_register/?", WorkerRegisterHandler),
    (r"/api/v1/heartbeat/?", HeartbeatHandler),
]
