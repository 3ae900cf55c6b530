"""Orca's jobs before they are queued: the holding pen, release delays, and updates by key.

An Orca job (PUT /api/v1/grading_queue) is a single job (store/single_jobs.py) with `orca_key`
and its response_url as callback_url. It is stored `created`, not queued, while it waits:
- for its grader image's build (`held_for`: the Dockerfile sha; sparse index): when the build
  succeeds every job held for it is queued by one update per course; when it fails they fail,
  each with its callback (the LMS is told) recorded by the same update;
- for its release time (`release_at`; sparse index): Orca's `priority` is a delay, so the job
  joins the queue at that time, moved there by the API's release sweep (release_due).
`orca_ref` (sparse index) finds a job not yet claimed by its course, key and response_url, so
that a PUT with the same key updates that job instead of adding one (Orca's createOrUpdateJob).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from broadway.courses import DEFAULT_COURSE
from broadway.models import Job, JobStatus
from broadway.store.course_shares import CourseShares
from broadway.store.deliveries import pending_delivery_fields
from broadway.store.jobs import HELD_ONLY, _job, only
from broadway.store.queue_keys import fresh_key

# Jobs moved to the queue by one release sweep; the rest wait for the next.
RELEASE_BATCH = 200
WAITING = [JobStatus.CREATED.value, JobStatus.QUEUED.value]


def orca_ref(course: str, key: str, response_url: str) -> str:
    """What identifies "the same job" for an update by key: the course's key and where it answers."""
    return hashlib.sha256(f"{course}\0{key}\0{response_url}".encode()).hexdigest()


class OrcaJobStore:
    def __init__(self, db: AsyncDatabase, shares: CourseShares | None = None) -> None:
        self.jobs = db.jobs
        self.shares = shares

    async def update_waiting(self, ref: str, fields: dict[str, Any], release_now: bool = False) -> Job | None:
        """Change the job with this ref while it is held or queued (not claimed); None if there is
        none. `release_now`: a job waiting for its release time is released at the next sweep."""
        doc = await self.jobs.find_one_and_update(
            {"orca_ref": only(ref), "status": {"$in": WAITING}},
            {"$set": {**fields, "updated_at": time.time()}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None and release_now and doc.get("release_at") is not None:
            now = time.time()
            await self.jobs.update_one({"_id": doc["_id"], "release_at": {"$gt": now}}, {"$set": {"release_at": now}})
            doc["release_at"] = now
        return _job(doc) if doc else None

    async def release_built(self, sha: str) -> int:
        """Queue every job held for this image (its build succeeded); how many."""
        courses = await self._held_courses(sha)
        moved = 0
        for course in courses:
            key = fresh_key(course)
            result = await self.jobs.update_many(
                {"held_for": only(sha), "course": course, "status": JobStatus.CREATED.value},
                {"$set": {"status": JobStatus.QUEUED.value, "queued_at": time.time(), "queue_key": key},
                 "$unset": HELD_ONLY},
            )  # fmt: skip
            moved += result.modified_count
            if result.modified_count and self.shares is not None:
                self.shares.queued(course, key)
        return moved

    async def fail_held(self, sha: str, error: str, callback_max_age_s: float) -> list[Job]:
        """Fail every job held for this image (its build failed), each LMS told through its callback."""
        failed = []
        async for doc in self.jobs.find({"held_for": only(sha)}, {"_id": 1}):
            now = time.time()
            ended: dict[str, Any] = {"status": JobStatus.FAILED.value, "error": error, "finished_at": now}
            ended.update(pending_delivery_fields(now, callback_max_age_s))
            after = await self.jobs.find_one_and_update(
                {"_id": doc["_id"], "status": JobStatus.CREATED.value},
                {"$set": ended, "$unset": {**HELD_ONLY, "orca_ref": ""}},
                {"stages": 0},
                return_document=ReturnDocument.AFTER,
            )
            if after is not None:
                failed.append(_job(after))
        return failed

    async def release_due(self, now: float) -> int:
        """Queue the jobs whose release time has come (at most RELEASE_BATCH); how many."""
        moved = 0
        cursor = self.jobs.find({"release_at": {"$lte": now}}, {"course": 1, "collation_key": 1}, limit=RELEASE_BATCH)
        async for doc in cursor:
            course = str(doc.get("course") or DEFAULT_COURSE)
            key = fresh_key(course, job_id=doc["_id"])
            result = await self.jobs.update_one(
                {"_id": doc["_id"], "status": JobStatus.CREATED.value, "release_at": {"$lte": now}},
                {"$set": {"status": JobStatus.QUEUED.value, "queued_at": time.time(), "queue_key": key},
                 "$unset": HELD_ONLY},
            )  # fmt: skip
            if result.modified_count:
                moved += 1
                if self.shares is not None:
                    self.shares.queued(course, key)
        return moved

    async def _held_courses(self, sha: str) -> list[str]:
        cursor = await self.jobs.aggregate([{"$match": {"held_for": only(sha)}}, {"$group": {"_id": "$course"}}])
        return sorted({str(row["_id"] or DEFAULT_COURSE) async for row in cursor})
