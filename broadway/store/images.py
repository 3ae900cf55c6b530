"""Grader image builds (collection `grader_images`, one document per Dockerfile sha) and their
archives (GridFS bucket `images`), so that any API process queues, hands out and serves them.

A build's document is keyed by the sha256 of its Dockerfile (`_id`). Each state has its own
sparse key, matched by range, one key per hot query (docs/store-notes.md):
- `queue_key` ("<queued at, zero-padded>:<sha>") while queued: builders claim the oldest;
- `builder` (the worker ref) while building: what a builder holds, and whose death frees it;
- `lease_until` while building: a build past its deadline is taken back (or failed).
The update that ends a build also records its Orca callback (`callback_url`, `delivery`,
`delivery_due`, the body frozen in `delivery.body`), as jobs do (store/deliveries.py).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bson import ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from broadway.store.deliveries import pending_delivery_fields

# Chunks of an archive read at once (255 KiB each): ~8 MiB a store answer.
CHUNKS_PER_READ = 32


class BuildStatus(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class ImageBuild:
    """One grader image build, as handlers see it."""

    sha: str
    status: BuildStatus
    dockerfile: str
    courses: list[str] = field(default_factory=list)
    attempts: int = 0
    attempt_id: str | None = None
    builder: str | None = None
    error: str | None = None
    size: int | None = None
    archive_id: str | None = None
    callback_url: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def id(self) -> str:
        """Its sha: what a builder's poll names it by (as a job by its id)."""
        return self.sha

    def public(self) -> dict[str, Any]:
        """The build's status as GET /grader_images/status/{sha} answers it."""
        body: dict[str, Any] = {"sha": self.sha, "status": self.status.value, "attempts": self.attempts}
        for name in ("error", "size", "created_at", "started_at", "finished_at"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return body


def _build(doc: dict[str, Any]) -> ImageBuild:
    return ImageBuild(
        sha=str(doc["_id"]),
        status=BuildStatus(doc["status"]),
        dockerfile=str(doc.get("dockerfile", "")),
        courses=[str(c) for c in doc.get("courses") or []],
        attempts=int(doc.get("attempts", 0)),
        attempt_id=doc.get("attempt_id"),
        builder=doc.get("builder"),
        error=doc.get("error"),
        size=doc.get("size"),
        archive_id=doc.get("archive_id"),
        callback_url=doc.get("callback_url"),
        created_at=doc.get("created_at"),
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
    )


def _queue_key(now: float, sha: str) -> str:
    # Zero-padded so that string order is time order.
    return f"{now:020.6f}:{sha}"


@dataclass(frozen=True)
class Requested:
    """What a build request did: `queued` when it (re)queued the build, else it answered the
    status of one already built or building."""

    build: ImageBuild
    queued: bool


class ImageStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.builds = db.grader_images
        self.bucket = AsyncGridFSBucket(db, bucket_name="images")
        self.files, self.chunks = db.images.files, db.images.chunks

    async def ensure_indexes(self) -> None:
        """The three state keys (idempotent)."""
        for key in ("queue_key", "builder", "lease_until"):
            await self.builds.create_index([(key, ASCENDING)], sparse=True)

    async def request(self, sha: str, dockerfile: str, course: str, callback_url: str | None) -> Requested:
        """Queue a build of `dockerfile` under its sha, unless it is built or building (then the
        course is added to its owners and its status answered). A failed build is queued again."""
        now = time.time()
        doc = {
            "_id": sha, "status": BuildStatus.QUEUED.value, "dockerfile": dockerfile, "courses": [course],
            "attempts": 0, "created_at": now, "queue_key": _queue_key(now, sha),
        }  # fmt: skip
        if callback_url:
            doc["callback_url"] = callback_url
        try:
            await self.builds.insert_one(doc)
            return Requested(_build(doc), queued=True)
        except DuplicateKeyError:
            pass
        requeue: dict[str, Any] = {
            "$set": {"status": BuildStatus.QUEUED.value, "queue_key": _queue_key(now, sha), "attempts": 0,
                     "created_at": now, **({"callback_url": callback_url} if callback_url else {})},
            "$unset": {"error": "", "finished_at": "", "started_at": "", "delivery": "", "delivery_due": ""},
            "$addToSet": {"courses": course},
        }  # fmt: skip
        again = await self.builds.find_one_and_update(
            {"_id": sha, "status": BuildStatus.FAILED.value}, requeue, return_document=ReturnDocument.AFTER
        )
        if again is not None:
            return Requested(_build(again), queued=True)
        found = await self.builds.find_one_and_update(
            {"_id": sha}, {"$addToSet": {"courses": course}}, return_document=ReturnDocument.AFTER
        )
        if found is None:  # removed in between: try once more from the start
            return await self.request(sha, dockerfile, course, callback_url)
        return Requested(_build(found), queued=False)

    async def get(self, sha: str) -> ImageBuild | None:
        """The build of that sha, in any state; None if it was never requested."""
        doc = await self.builds.find_one({"_id": sha}, {"delivery": 0})
        return _build(doc) if doc else None

    async def claim_next(self, worker_ref: str, lease_s: float) -> ImageBuild | None:
        """The oldest queued build, now building under this worker for at most lease_s seconds."""
        now = time.time()
        doc = await self.builds.find_one_and_update(
            {"queue_key": {"$gt": ""}},
            {
                "$set": {
                    "status": BuildStatus.BUILDING.value,
                    "builder": worker_ref,
                    "lease_until": now + lease_s,
                    "attempt_id": secrets.token_hex(8),
                    "started_at": now,
                },
                "$unset": {"queue_key": ""},
                "$inc": {"attempts": 1},
            },
            sort=[("queue_key", ASCENDING)],
            projection={"delivery": 0},
            return_document=ReturnDocument.AFTER,
        )
        return _build(doc) if doc else None

    async def release(self, sha: str, attempt_id: str) -> bool:
        """Give a claimed build back to the queue (its poller hung up before receiving it)."""
        now = time.time()
        result = await self.builds.update_one(
            {"_id": sha, "attempt_id": attempt_id, "status": BuildStatus.BUILDING.value},
            {
                "$set": {"status": BuildStatus.QUEUED.value, "queue_key": _queue_key(now, sha)},
                "$unset": {"builder": "", "lease_until": "", "attempt_id": ""},
                "$inc": {"attempts": -1},
            },
        )
        return result.modified_count == 1

    async def held_by(self, worker_ref: str) -> list[ImageBuild]:
        """The builds this worker is building."""
        cursor = self.builds.find({"builder": worker_ref}, {"delivery": 0})
        return [_build(doc) async for doc in cursor]

    async def building(self) -> list[ImageBuild]:
        """Every build being built (there are few: one per builder slot at most)."""
        cursor = self.builds.find({"builder": {"$gt": ""}}, {"delivery": 0, "dockerfile": 0})
        return [_build(doc) async for doc in cursor]

    async def expired(self, now: float) -> list[ImageBuild]:
        """Builds whose lease ran out while building."""
        cursor = self.builds.find({"lease_until": {"$lt": now}}, {"delivery": 0, "dockerfile": 0})
        return [_build(doc) async for doc in cursor]

    async def take_back(self, build: ImageBuild, max_attempts: int, reason: str, max_age_s: float) -> ImageBuild | None:
        """A build whose builder died or ran past its lease: queued again while attempts remain,
        else failed with `reason`. None if it changed meanwhile (reported, taken by another process)."""
        fence = {"_id": build.sha, "attempt_id": build.attempt_id, "status": BuildStatus.BUILDING.value}
        if build.attempts < max_attempts:
            now = time.time()
            doc = await self.builds.find_one_and_update(
                fence,
                {
                    "$set": {
                        "status": BuildStatus.QUEUED.value,
                        "queue_key": _queue_key(now, build.sha),
                        "error": reason,
                    },
                    "$unset": {"builder": "", "lease_until": "", "attempt_id": ""},
                },
                projection={"delivery": 0},
                return_document=ReturnDocument.AFTER,
            )
            return _build(doc) if doc else None
        return await self._end(fence, False, f"{reason} (after {build.attempts} attempt(s))", build, max_age_s)

    async def attach_archive(self, sha: str, attempt_id: str, archive_id: str, size: int) -> str | None:
        """Record the uploaded archive of a build this attempt holds; the archive id it replaces
        (to delete), "" if none. None if the attempt no longer holds the build."""
        doc = await self.builds.find_one_and_update(
            {"_id": sha, "attempt_id": attempt_id, "status": BuildStatus.BUILDING.value},
            {"$set": {"archive_id": archive_id, "size": size}},
            projection={"archive_id": 1},
            return_document=ReturnDocument.BEFORE,
        )
        if doc is None:
            return None
        return str(doc.get("archive_id") or "")

    async def finish(
        self, build: ImageBuild, worker_ref: str, succeeded: bool, error: str | None, max_age_s: float
    ) -> ImageBuild | None:
        """End a build this worker's attempt holds: succeeded or failed (with `error`). The same
        update records its callback when it has a callback_url. None if the attempt no longer holds it."""
        fence = {"_id": build.sha, "attempt_id": build.attempt_id, "builder": worker_ref,
                 "status": BuildStatus.BUILDING.value}  # fmt: skip
        return await self._end(fence, succeeded, error, build, max_age_s)

    async def _end(
        self, fence: dict[str, Any], succeeded: bool, error: str | None, build: ImageBuild, max_age_s: float
    ) -> ImageBuild | None:
        now = time.time()
        status = BuildStatus.SUCCEEDED if succeeded else BuildStatus.FAILED
        fields: dict[str, Any] = {"status": status.value, "finished_at": now}
        unset: dict[str, Any] = {"builder": "", "lease_until": ""}
        if error:
            fields["error"] = error
        else:
            unset["error"] = ""
        if build.callback_url:
            fields |= pending_delivery_fields(now, max_age_s)
            fields["delivery"]["body"] = build_result_body(build.sha, succeeded, error)
        doc = await self.builds.find_one_and_update(
            fence, {"$set": fields, "$unset": unset}, projection={"delivery": 0}, return_document=ReturnDocument.AFTER
        )
        return _build(doc) if doc else None

    # -- archives ----------------------------------------------------------------------------

    def open_upload(self, sha: str) -> Any:
        """A GridFS upload stream for a build's archive (write() chunks, then close() or abort())."""
        return self.bucket.open_upload_stream(f"{sha}.tgz", metadata={"sha": sha})

    async def archive_chunks(self, archive_id: str) -> AsyncIterator[bytes]:
        """An archive's bytes, chunk by chunk; FileNotFoundError if it is gone.

        Read CHUNKS_PER_READ chunks at a time by range of `n`, not through GridFS's download
        stream: its one find over every chunk is built whole by nx-27017 before the first batch,
        and an archive over 48 MB is then larger than the store's largest message."""
        oid = ObjectId(archive_id)
        meta = await self.files.find_one({"_id": oid}, {"length": 1, "chunkSize": 1})
        if meta is None:
            raise FileNotFoundError(archive_id)
        length, chunk_size = int(meta["length"]), int(meta["chunkSize"])
        total = -(-length // chunk_size)
        for start in range(0, total, CHUNKS_PER_READ):
            end = min(start + CHUNKS_PER_READ, total)
            cursor = self.chunks.find({"files_id": oid, "n": {"$gte": start, "$lt": end}}, sort=[("n", ASCENDING)])
            expected = start
            async for doc in cursor:
                if doc["n"] != expected:
                    raise FileNotFoundError(f"{archive_id}: chunk {expected} is missing")
                expected += 1
                yield bytes(doc["data"])
            if expected != end:
                raise FileNotFoundError(f"{archive_id}: chunk {expected} is missing")

    async def delete_archive(self, archive_id: str) -> None:
        """Remove an archive (a missing one is skipped)."""
        try:
            await self.bucket.delete(ObjectId(archive_id))
        except NoFile:
            pass


def build_result_body(sha: str, succeeded: bool, error: str | None) -> str:
    """Orca's GraderImageBuildResult, as the build's callback sends it (frozen at its end)."""
    body: dict[str, Any] = {
        "type": "GraderImageBuildResult",
        "dockerfile_sha_sum": sha,
        "was_successful": succeeded,
        "build_logs": [{"step": "Run docker build on Dockerfile.", "stderr": error or ""}],
    }
    if error and not succeeded:
        body["server_exception"] = error
    return json.dumps(body, sort_keys=True, separators=(",", ":"))
