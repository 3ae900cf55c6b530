"""Grader images built on request (Orca's POST /grader_images), by graders started with --build.

Clients (a course token or the admin client token, as `Authorization: Bearer` or Orca's
`x-api-key`) ask for a build and follow its status. A build is claimed by a builder's poll
(handlers/jobs.py hands it out before any job), built there, its gzip'd `docker save` archive
streamed back into GridFS (one upload per attempt, capped by --max-image-mb), then reported. Any
API process then serves GET /api/v1/images/{sha}.tgz to graders that lack the image.

Builds are content-addressed: the same Dockerfile from two courses is one build, visible to
both (each course that asked is recorded as an owner); others get 404.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import Any

import tornado.ioloop
import tornado.web

from broadway.callbacks.targets import CallbackTargetError, TargetPolicy, check_callback_url
from broadway.courses import CallerKind, Scope
from broadway.handlers.base import SELF_AUTHENTICATED, ApiError, APIHandler, Services, needs_scope
from broadway.liveness import worker_label
from broadway.store.images import BuildStatus, ImageBuild

log = logging.getLogger(__name__)

SHA = re.compile(r"[0-9a-f]{64}")
MAX_DOCKERFILE_CHARS = 1 << 20
# A builder's log tail kept as a failed build's error.
MAX_ERROR_CHARS = 4000
NOT_FOUND = "no such grader image (never requested, or not your course's)"
BUILD_KIND = "image_build"


def build_payload(build: ImageBuild) -> dict[str, Any]:
    """What a builder's poll answers for a build: its Dockerfile and where to send the result."""
    return {
        "job_id": build.sha,
        "kind": BUILD_KIND,
        "attempt": build.attempt_id,
        "stages": [],
        "build": {
            "sha": build.sha,
            "dockerfile_contents": build.dockerfile,
            "archive_url": f"/api/v1/grader_images/{build.sha}/archive",
            "result_url": f"/api/v1/grader_images/{build.sha}/result",
        },
    }


class BuildSweeper:
    """Takes back builds whose builder died or ran past --build-timeout: queued again while
    attempts remain, else failed. Run (at most once a second per process) by builders' polls
    and status reads, the only places that wait on a build; every step is a conditional update."""

    def __init__(self) -> None:
        self._last = 0.0

    async def sweep(self, services: Services) -> None:
        now = time.time()
        if now - self._last < 1.0:
            return
        self._last = now
        store, config = services.store, services.config
        stale: dict[str, tuple[ImageBuild, str]] = {}
        for build in await store.images.expired(now):
            stale[build.sha] = (build, f"the build did not finish within {config.build_timeout_s:g}s")
        for build in await store.images.building():
            if build.sha in stale or build.builder is None:
                continue
            if await store.workers.get_alive(build.builder) is None:
                stale[build.sha] = (build, f"its builder ({build.builder[:8]}) was declared dead")
        for build, reason in stale.values():
            after = await store.images.take_back(build, config.max_attempts, reason, config.callback_max_age_s)
            if after is None:
                continue
            if after.status is BuildStatus.QUEUED:
                log.warning("image build %s: %s; queued again", build.sha[:12], reason)
                services.jobs_signal.notify()
            else:
                log.warning("image build %s failed: %s", build.sha[:12], after.error)
                await build_ended(services, after)


def sweeper(handler: tornado.web.RequestHandler) -> BuildSweeper:
    """This application's sweeper (one per API process)."""
    found: BuildSweeper = handler.application.settings.setdefault("image_build_sweeper", BuildSweeper())
    return found


async def build_ended(services: Services, build: ImageBuild) -> None:
    """After a build ends: the holding pen releases or fails the jobs waiting on it, waiting
    builders and graders are woken, and its callback (recorded by the ending update) leaves."""
    succeeded = build.status is BuildStatus.SUCCEEDED
    holding_pen = getattr(services, "holding_pen", None)
    if holding_pen is not None:
        await holding_pen.build_finished(build.sha, succeeded, None if succeeded else build.error)
    services.jobs_signal.notify()
    if build.callback_url and services.deliverer is not None:
        services.deliverer.notify()


def _orca_errors(handler: APIHandler, *messages: str) -> None:
    # Orca's shape ({"errors": [...]}), with this API's own "error" beside it.
    handler.write_json({"errors": list(messages), "error": "; ".join(messages), "status": 400}, status=400)


class GraderImagesHandler(APIHandler):
    @needs_scope(Scope.ASSIGNMENTS)
    async def post(self) -> None:
        """Queue a build of a Dockerfile (unless that sha is built or building): 200
        {"message": "OK", "status": {...}}; 400 {"errors": [...]} for an invalid request."""
        body = self.json_body
        if not isinstance(body, dict):
            return _orca_errors(self, "the request body must be a JSON object")
        contents, sha = body.get("dockerfile_contents"), body.get("dockerfile_sha_sum")
        response_url = body.get("response_url")
        errors = []
        if not isinstance(contents, str) or not contents.strip():
            errors.append("dockerfile_contents must be a non-empty string")
        elif len(contents) > MAX_DOCKERFILE_CHARS:
            errors.append(f"dockerfile_contents is longer than {MAX_DOCKERFILE_CHARS} characters")
        if not isinstance(sha, str) or not SHA.fullmatch(sha.lower()):
            errors.append("dockerfile_sha_sum must be the 64 hex digits of the contents' sha256")
        if response_url is not None and not isinstance(response_url, str):
            errors.append("response_url must be a string")
        if errors:
            return _orca_errors(self, *errors)
        assert isinstance(contents, str) and isinstance(sha, str)
        sha = sha.lower()
        actual = hashlib.sha256(contents.encode("utf-8", "surrogatepass")).hexdigest()
        if actual != sha:
            return _orca_errors(self, f"dockerfile_sha_sum {sha} is not the sha256 of dockerfile_contents ({actual})")
        if response_url:
            policy = TargetPolicy.from_strings(self.services.config.callback_allow_networks)
            try:
                check_callback_url(response_url, policy)
            except CallbackTargetError as e:
                return _orca_errors(self, f"response_url: {e}")
        await sweeper(self).sweep(self.services)
        requested = await self.services.store.images.request(sha, contents, self.caller.course, response_url or None)
        build = requested.build
        if requested.queued:
            log.info("image build %s queued by course %s", sha[:12], self.caller.course)
            self.services.jobs_signal.notify()
        message = "OK"
        if build.status is BuildStatus.SUCCEEDED:
            message = "This grader already exists on the server; no build needed."
        self.write_json({"message": message, "status": build.public()})


class GraderImageStatusHandler(APIHandler):
    @needs_scope(Scope.ASSIGNMENTS)
    async def get(self, sha: str) -> None:
        """A build's status: {"sha", "status": queued|building|succeeded|failed, "error"?, ...}."""
        build = await self._visible(sha.lower())
        await sweeper(self).sweep(self.services)
        build = await self._visible(build.sha)
        self.write_json(build.public())

    async def _visible(self, sha: str) -> ImageBuild:
        build = await self.services.store.images.get(sha) if SHA.fullmatch(sha) else None
        caller = self.caller
        if build is None or (caller.kind is not CallerKind.ADMIN and caller.course not in build.courses):
            raise ApiError(404, NOT_FOUND)
        return build


class BuilderHandler(APIHandler):
    """A builder's endpoints: the build must be building under this worker's attempt."""

    # A grader's endpoint: it checks its own credentials (worker id), not a client's.
    access = SELF_AUTHENTICATED

    async def held_build(self, sha: str) -> tuple[ImageBuild, str]:
        """The build and the worker's ref; 404 for an unknown worker or build, 409 when this
        worker's attempt no longer holds it (taken back, reported already)."""
        worker = await self.require_worker(self.required_str("worker_id"))
        attempt = self.required_str("attempt")
        build = await self.services.store.images.get(sha) if SHA.fullmatch(sha) else None
        if build is None:
            raise ApiError(404, f"no grader image build {sha[:64]!r}")
        if build.status is not BuildStatus.BUILDING or build.builder != worker.ref or build.attempt_id != attempt:
            raise ApiError(409, f"this worker's attempt does not hold build {sha} (status: {build.status.value})")
        return build, worker.ref


@tornado.web.stream_request_body
class GraderImageArchiveHandler(BuilderHandler):
    """The builder streams the gzip'd `docker save` archive here; it goes to GridFS chunk by chunk."""

    _upload: Any = None
    _received = 0

    async def prepare(self) -> None:
        # Not APIHandler.prepare: the body is streamed (data_received), never held whole.
        if (self.request.method or "").upper() not in self.allowed_methods():
            return  # Tornado answers 405 for it
        limit = self.services.config.max_image_bytes
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the archive is {declared} bytes; the limit is {limit} (--max-image-mb)")
        self.request.connection.set_max_body_size(limit)  # type: ignore[union-attr]
        sha = self.path_args[0] if self.path_args else ""
        self._build, self._ref = await self.held_build(sha)
        self._upload = self.services.store.images.open_upload(sha)

    async def data_received(self, chunk: bytes) -> None:
        if self._upload is None:
            return  # a method this handler does not serve (405)
        self._received += len(chunk)
        if self._received > self.services.config.max_image_bytes:
            await self._abort()
            raise ApiError(413, f"the archive is over the limit of {self.services.config.max_image_bytes} bytes")
        await self._upload.write(chunk)

    async def post(self, sha: str) -> None:
        """Store the archive of the build this worker's attempt holds: {"sha", "size"}."""
        if self._received == 0:
            await self._abort()
            raise ApiError(400, "the archive is empty")
        upload, self._upload = self._upload, None
        await upload.close()
        archive_id = str(upload._id)
        store = self.services.store.images
        replaced = await store.attach_archive(self._build.sha, self._build.attempt_id or "", archive_id, self._received)
        if replaced is None:
            await store.delete_archive(archive_id)
            raise ApiError(409, f"this worker's attempt no longer holds build {sha}: the archive was dropped")
        if replaced:
            await store.delete_archive(replaced)
        log.info("image build %s: archive of %d bytes stored", sha[:12], self._received)
        self.write_json({"sha": self._build.sha, "size": self._received})

    def on_connection_close(self) -> None:
        if self._upload is not None:
            tornado.ioloop.IOLoop.current().add_callback(self._abort)

    def on_finish(self) -> None:
        if self._upload is not None:
            tornado.ioloop.IOLoop.current().add_callback(self._abort)

    async def _abort(self) -> None:
        upload, self._upload = self._upload, None
        if upload is None:
            return
        try:
            await upload.abort()
        except Exception as e:  # nothing written yet: GridFS has no file to remove
            log.debug("aborting an image upload: %s", e)


class GraderImageResultHandler(BuilderHandler):
    async def post(self, sha: str) -> None:
        """The builder's verdict: {"success": bool, "error"?: the build log's tail}. A success
        needs the archive uploaded first (409 otherwise)."""
        build, ref = await self.held_build(sha)
        success = self.arg("success")
        if not isinstance(success, bool):
            raise ApiError(400, "argument 'success' must be true or false")
        error = self.arg("error")
        if error is not None and not isinstance(error, str):
            raise ApiError(400, "argument 'error' must be a string")
        error = error[-MAX_ERROR_CHARS:] if error else None
        if success and build.archive_id is None:
            raise ApiError(409, f"build {sha} has no archive yet: upload it before reporting success")
        if not success and not error:
            error = "the build failed (the builder gave no log)"
        config = self.services.config
        ended = await self.services.store.images.finish(
            build, ref, success, None if success else error, config.callback_max_age_s
        )
        if ended is None:
            raise ApiError(409, f"this worker's attempt no longer holds build {sha}")
        worker = await self.services.store.workers.get(ref)
        label = worker_label(worker) if worker else ref[:8]
        log.info("image build %s %s on %s", sha[:12], ended.status.value, label)
        await build_ended(self.services, ended)
        self.write_json(ended.public())


class ImageDownloadHandler(APIHandler):
    # A grader's endpoint: it checks its own credentials (worker id), not a client's.
    access = SELF_AUTHENTICATED

    async def get(self, sha: str) -> None:
        """A built image's archive (gzip'd `docker save`), streamed from GridFS with its length;
        for registered graders only (401 without a worker id, 404 for an unknown one)."""
        worker_id = self.arg("worker_id")
        if not isinstance(worker_id, str) or not worker_id:
            raise ApiError(401, "a grader's worker_id is required")
        await self.require_worker(worker_id)
        sha = sha.lower()
        build = await self.services.store.images.get(sha) if SHA.fullmatch(sha) else None
        if build is None or build.status is not BuildStatus.SUCCEEDED or build.archive_id is None:
            raise ApiError(404, f"no built grader image {sha[:64]}")
        self.set_header("Content-Type", "application/gzip")
        self.set_header("Content-Length", str(build.size or 0))
        try:
            async for chunk in self.services.store.images.archive_chunks(build.archive_id):
                self.write(chunk)
                await self.flush()
        except FileNotFoundError:
            raise ApiError(404, f"the archive of image {sha} is gone from the store") from None
        await self.finish()


default_handlers = [
    (r"/api/v1/grader_images/?", GraderImagesHandler),
    (r"/api/v1/grader_images/status/([^/]+)/?", GraderImageStatusHandler),
    (r"/api/v1/grader_images/([^/]+)/archive/?", GraderImageArchiveHandler),
    (r"/api/v1/grader_images/([^/]+)/result/?", GraderImageResultHandler),
    (r"/api/v1/images/([^/]+)\.tgz", ImageDownloadHandler),
]
