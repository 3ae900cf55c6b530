"""Single submissions in the `jobs` collection: created queued, changed while queued, cancelled.

They share the queue, the claim, the report and the reaper with a run's jobs (store/jobs.py):
kind "single", no run_id, and queued from the start with a key that sorts by their priority,
then by their collation rank (how many jobs of the same user or team were queued before them in
their course; see broadway/store/queue_keys.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from broadway.courses import Owner
from broadway.models import Job, JobKind, JobStatus
from broadway.store.course_shares import CourseShares
from broadway.store.deliveries import pending_delivery_fields
from broadway.store.files import StoredFile
from broadway.store.ids import parse_id
from broadway.store.jobs import HELD_ONLY, QUEUED_ONLY, _job, count, only
from broadway.store.queue_keys import fresh_key


@dataclass(frozen=True)
class NewSingleJob:
    job_id: str
    course: str
    stages: list[dict[str, Any]]
    files: list[StoredFile]
    exercise: str | None
    params: dict[str, str]
    assignment: str | None
    work_id: str | None
    callback_url: str | None
    priority: int
    # The JWT subject that submitted it (None: the course itself, or the admin).
    subject: str | None = None
    # Whose work it is, for Orca's collation ("user:<id>" or "team:<id>"); None: nobody's in particular.
    collation: str | None = None
    # An Orca job's extra fields, and whether it waits (for its image, or its release time)
    # before it is queued: see broadway/store/orca_jobs.py.
    orca: OrcaFields | None = None


@dataclass(frozen=True)
class OrcaFields:
    key: str
    # Finds the job again for an update by key (see orca_jobs.orca_ref); kept only until it is claimed.
    ref: str
    grader_image_sha: str
    container_response_url: str | None = None
    # Held in the holding pen until this image's build ends.
    held_for: str | None = None
    # Queued at this time, not before (Orca's `priority` as a release delay).
    release_at: float | None = None


@dataclass(frozen=True)
class Change:
    """What a PATCH changes; None: unchanged. `stages`/`files` come re-planned from the lifecycle."""

    stages: list[dict[str, Any]] | None = None
    files: list[StoredFile] | None = None
    exercise: str | None = None
    params: dict[str, str] | None = None
    priority: int | None = None
    callback_url: str | None = None


def collation_key(course: str, collation: str) -> str:
    return f"{course}/{collation}"


def orca_doc_fields(orca: OrcaFields) -> dict[str, Any]:
    fields: dict[str, Any] = {"orca_key": orca.key, "orca_ref": orca.ref, "grader_image_sha": orca.grader_image_sha}
    if orca.container_response_url:
        fields["container_response_url"] = orca.container_response_url
    if orca.held_for is not None:
        fields["held_for"] = orca.held_for
    elif orca.release_at is not None:
        fields["release_at"] = orca.release_at
    return fields


class SingleJobStore:
    def __init__(self, db: AsyncDatabase, shares: CourseShares | None = None) -> None:
        self.jobs = db.jobs
        # The claim's view of the courses' queues (JobStore.shares), told of each job queued here.
        self.shares = shares

    async def _rank(self, course: str, collation: str | None) -> int:
        """How many of this user's (or team's) jobs are queued in the course now: one range count on
        the sparse `collation_key` index, which only queued jobs carry."""
        if collation is None:
            return 0
        return await count(self.jobs, {"collation_key": only(collation_key(course, collation))})

    def _queued(self, course: str, key: str) -> None:
        if self.shares is not None:
            self.shares.queued(course, key)

    async def insert(self, new: NewSingleJob) -> Job:
        """Store a single submission, queued at once (an Orca job may be held first: `created`)."""
        oid = ObjectId(new.job_id)
        now = time.time()
        doc: dict[str, Any] = {
            "_id": oid,
            "kind": JobKind.SINGLE.value,
            "run_id": None,
            "seq": 0,
            "status": JobStatus.QUEUED.value,
            "stages": new.stages,
            "student": None,
            "attempts": 0,
            "course": new.course,
            "owner_subject": new.subject,
            "assignment": new.assignment,
            "params": new.params,
            "work_id": new.work_id,
            "priority": new.priority,
            "files": [f.as_doc() for f in new.files],
            "exercise": new.exercise,
            "created_at": now,
            "queued_at": now,
            "queue_key": fresh_key(new.course, new.priority, oid, await self._rank(new.course, new.collation)),
        }
        if new.collation is not None:
            doc["collation"] = new.collation
            doc["collation_key"] = collation_key(new.course, new.collation)
        if new.callback_url:
            doc["callback_url"] = new.callback_url
        if new.orca is not None:
            doc.update(orca_doc_fields(new.orca))
            if "held_for" in doc or "release_at" in doc:
                doc["status"] = JobStatus.CREATED.value
                doc["queued_at"] = None
                doc.pop("queue_key")
                doc.pop("collation_key", None)
        await self.jobs.insert_one(doc)
        if "queue_key" in doc:
            self._queued(new.course, doc["queue_key"])
        return _job(doc)

    async def get(self, job_id: str) -> tuple[Job, dict[str, str]] | None:
        """A single submission and its params, or None (no such id, or a run's job)."""
        oid = parse_id(job_id)
        doc = await self.jobs.find_one({"_id": oid, "kind": JobKind.SINGLE.value}) if oid else None
        return (_job(doc), doc.get("params") or {}) if doc else None

    async def get_owned(self, job_id: str) -> tuple[Job, dict[str, str], Owner] | None:
        """A single submission, its params and its owner, or None (no such id, or a run's job)."""
        oid = parse_id(job_id)
        doc = await self.jobs.find_one({"_id": oid, "kind": JobKind.SINGLE.value}) if oid else None
        return (_job(doc), doc.get("params") or {}, Owner.of(doc)) if doc else None

    async def change_queued(self, job_id: str, change: Change) -> Job | None:
        """Apply a PATCH while the job is still queued (not claimed); None once it is not."""
        oid = parse_id(job_id)
        if oid is None:
            return None
        fields: dict[str, Any] = {}
        unset: dict[str, str] = {}
        if change.stages is not None:
            fields["stages"] = change.stages
        if change.files is not None:
            fields["files"] = [f.as_doc() for f in change.files]
            fields["exercise"] = change.exercise
        if change.params is not None:
            fields["params"] = change.params
        if change.callback_url is not None:
            if change.callback_url:
                fields["callback_url"] = change.callback_url
            else:
                unset["callback_url"] = ""
        if change.priority is not None:
            fields["priority"] = change.priority
            # A new key re-sorts the job among its new peers; it waits from now in that place.
            current = await self.jobs.find_one({"_id": oid}, {"course": 1, "collation": 1})
            if current is None:
                return None
            course = str(current.get("course") or "default")
            rank = await self._rank(course, current.get("collation"))
            fields["queue_key"] = fresh_key(course, change.priority, oid, max(rank - 1, 0))
        update: dict[str, Any] = {"$set": {**fields, "updated_at": time.time()}}
        if unset:
            update["$unset"] = unset
        doc = await self.jobs.find_one_and_update(
            {"_id": oid, "kind": JobKind.SINGLE.value, "status": JobStatus.QUEUED.value, "attempts": 0},
            update,
            return_document=ReturnDocument.AFTER,
        )
        if doc and "queue_key" in fields:
            self._queued(str(doc.get("course") or "default"), fields["queue_key"])
        return _job(doc) if doc else None

    async def cancel(self, job_id: str, callback_max_age_s: float) -> Job | None:
        """queued/running -> cancelled (its callback recorded in the same update); None when it
        had already ended. A running job's grader learns it from its next heartbeat's answer and
        kills the container; its report is refused (409)."""
        oid = parse_id(job_id)
        if oid is None:
            return None
        while True:
            doc = await self.jobs.find_one({"_id": oid, "kind": JobKind.SINGLE.value}, {"status": 1, "callback_url": 1})
            if doc is None or JobStatus(doc["status"]).terminal:
                return None
            now = time.time()
            fields: dict[str, Any] = {
                "status": JobStatus.CANCELLED.value,
                "finished_at": now,
                "error": "cancelled by a client",
            }
            if doc.get("callback_url"):
                fields.update(pending_delivery_fields(now, callback_max_age_s))
            after = await self.jobs.find_one_and_update(
                {"_id": oid, "status": doc["status"]},
                {"$set": fields, "$unset": {**QUEUED_ONLY, **HELD_ONLY, "holder": ""}},
                return_document=ReturnDocument.AFTER,
            )
            if after is not None:
                return _job(after)
            # Its status changed between the two steps (claimed, or reported): look again.
