"""Grading jobs in the `jobs` collection, and the queue they form.

A job is in the queue exactly while it carries `queue_key` (set when queued, unset when claimed
or cancelled), and running exactly while it carries `holder` (the worker's ref). Hot queries
filter on one of those single indexed fields: the claim filters and sorts on `queue_key`,
which stays ~1 ms at 100k queued jobs on nx-27017, where filtering on `status` and sorting on
another field scans; nx-27017's count_documents scans whatever the filter (~100 ms at 2k jobs),
so counts go through aggregate.
Keys start with the job's course; the claim picks the course furthest below its fair share
and takes the first job of that course's range (broadway/store/queue_keys.py has the order
within a course, broadway/store/course_shares.py how courses are picked).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pymongo
from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from broadway.courses import DEFAULT_COURSE
from broadway.models import Job, JobKind, JobStatus, Run, SingleFields
from broadway.store import run_status_keys
from broadway.store.course_shares import CourseShares
from broadway.store.deliveries import pending_delivery_fields
from broadway.store.ids import oid, parse_id
from broadway.store.queue_keys import (
    COURSE_MARK,
    MAX_PRIORITY,
    PRIORITY_FRESH,
    PRIORITY_PIPELINE,
    PRIORITY_REQUEUED,
    course_prefix,
    course_range,
    fresh_key,
    queue_key,
)
from broadway.store.run_status_keys import counts_pipeline, key_of, moved, unkeyed
from broadway.validation import PlannedJob, RunPlan

log = logging.getLogger(__name__)

# Operations whose cost grows with a run's size (100k students: ~20 s on nx-27017) get this
# bound instead of the client's per-operation timeout.
BULK_TIMEOUT_S = 600.0
# Documents per write of a bulk operation: ~30-50 ms each on nx-27017, so heartbeats and claims
# queued behind one wait no longer than that.
WRITE_BATCH = 200
QUEUE_BATCH = 500

ACTIVE = [JobStatus.CREATED.value, JobStatus.QUEUED.value, JobStatus.RUNNING.value]

# What a recorded report reads back: the job without the parts it does not need.
RECORDED_FIELDS = {"stages": 0, "result": 0}
# Fields only a queued job carries: dropped whenever it leaves the queue. An Orca job's
# `orca_ref` goes too: once it runs, the same key makes a new job instead of updating it.
QUEUED_ONLY = {"queue_key": "", "collation_key": "", "orca_ref": ""}
# Fields only a job held before the queue carries (broadway/store/orca_jobs.py).
HELD_ONLY = {"held_for": "", "release_at": ""}


def _single(doc: dict[str, Any]) -> SingleFields | None:
    if doc.get("kind") != JobKind.SINGLE.value:
        return None
    return SingleFields(
        course=doc.get("course", "default"),
        work_id=doc.get("work_id"),
        assignment=doc.get("assignment"),
        priority=doc.get("priority", 0),
        callback_url=doc.get("callback_url"),
        files=doc.get("files", []),
        exercise=doc.get("exercise"),
        grade=doc.get("grade"),
        comments=doc.get("comments") or [],
        created_at=doc.get("created_at"),
        orca_key=doc.get("orca_key"),
        grader_image_sha=doc.get("grader_image_sha"),
        held_for=doc.get("held_for"),
        release_at=doc.get("release_at"),
    )


def _job(doc: dict[str, Any]) -> Job:
    return Job(
        id=str(doc["_id"]),
        run_id=str(doc["run_id"]) if doc.get("run_id") else None,
        kind=JobKind(doc["kind"]),
        seq=doc["seq"],
        status=JobStatus(doc["status"]),
        stages=doc.get("stages", []),
        student=doc.get("student"),
        attempts=doc.get("attempts", 0),
        attempt_id=doc.get("attempt_id"),
        worker=doc.get("worker"),
        result=doc.get("result"),
        error=doc.get("error"),
        queued_at=doc.get("queued_at"),
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        single=_single(doc),
        course=str(doc.get("course") or DEFAULT_COURSE),
    )


class ReportOutcome(enum.Enum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"
    # A single submission's report came without its ending (or a run job's with one): decide
    # it for the job's kind and report again.
    WRONG_KIND = "wrong_kind"


@dataclass(frozen=True)
class Report:
    outcome: ReportOutcome
    job: Job | None
    # RECORDED from a job the worker was running until this report (not one requeued from it
    # meanwhile): the report freed one of its slots, and it is alive (it held a job a moment ago).
    freed_slot: bool = False
    # Whether that job's claim was a legacy grader's (see JobStore.claim_next).
    claimed_legacy: bool = False


@dataclass(frozen=True)
class Ending:
    """How a single submission ends, as its lifecycle (broadway/single_jobs.py) decided it."""

    status: JobStatus
    grade: float | None = None
    comments: list[str] | None = None
    error: str | None = None
    # Set when the job has a callback_url: its delivery is recorded by the ending update.
    callback_max_age_s: float | None = None
    # An Orca job's GradingJobResult: what its callback carries.
    orca_response: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reaped:
    requeued: list[Job]
    failed: list[Job]


def new_job_doc(job: PlannedJob, run_id: str, course: str = DEFAULT_COURSE) -> dict[str, Any]:
    """The document of a run's job as planned (broadway/validation.py), not yet queued."""
    job_id, kind, seq, stages, student = job.job_id, job.kind, job.seq, job.stages, job.student
    doc = {
        "_id": ObjectId(job_id),
        # References are stored as hex strings: nx-27017 cannot match an ObjectId outside _id.
        "run_id": str(run_id),
        "kind": kind.value,
        "seq": seq,
        "status": JobStatus.CREATED.value,
        "stages": stages,
        "student": student,
        "attempts": 0,
        "course": course,
    }
    if kind is JobKind.STUDENT:
        doc["start_chunk"] = start_chunk(run_id, seq // QUEUE_BATCH)
    return doc


def upgraded_key(old: str, course: str) -> str:
    """A queue key from before courses ("<class>[<priority>]<ns><id>") in today's form, same order."""
    job_class, rest = old[:1], old[1:]
    priority = rest[:4] if job_class == PRIORITY_FRESH else f"{MAX_PRIORITY:04d}"
    if job_class == PRIORITY_FRESH:
        rest = rest[4:]
    return f"{course_prefix(course)}{job_class}{priority}{0:06d}{rest}"


def _cancelled(run_id: str, keyed: bool) -> dict[str, Any]:
    """What a cancelled job of a run is set to; `keyed`: a student, whose status key moves too."""
    fields: dict[str, Any] = {"status": JobStatus.CANCELLED.value, "finished_at": time.time()}
    if keyed:
        fields[key_of(JobStatus.CANCELLED)] = str(run_id)
    return fields


def start_chunk(run_id: str, number: int) -> str:
    """The key queue_students moves a run's student jobs by, QUEUE_BATCH at a time."""
    return f"{run_id}:{number}"


def only(value: str) -> dict[str, str]:
    """An equality written as a one-value range, for the filter of an update or update_many:
    nx-27017 scans the collection for an equality on an indexed field other than _id in those
    (5.5 ms at 8k jobs, growing with every job kept) but answers the range from the index
    (0.6 ms). On MongoDB it matches the same documents: the field always holds a string."""
    return {"$gte": value, "$lte": value}


async def count(collection: AsyncCollection, match: dict[str, Any]) -> int:
    """count_documents through aggregate: nx-27017 scans for count_documents, not for $match."""
    cursor = await collection.aggregate([{"$match": match}, {"$count": "n"}])
    rows = await cursor.to_list()
    return int(rows[0]["n"]) if rows else 0


class JobStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.jobs = db.jobs
        self.shares = CourseShares(db)

    async def ensure_queue(self) -> None:
        """The queue's indexes, and keys from before courses rewritten into their course's range."""
        await self.jobs.create_index([("queue_key", ASCENDING)], sparse=True)
        # A job's collation rank counts its user's queued jobs (see queue_keys.py); only queued jobs carry it.
        await self.jobs.create_index([("collation_key", ASCENDING)], sparse=True)
        # Orca jobs before they are queued (broadway/store/orca_jobs.py).
        for key in ("orca_ref", "held_for", "release_at"):
            await self.jobs.create_index([(key, ASCENDING)], sparse=True)
        await run_status_keys.ensure_indexes(self.jobs)
        async for doc in self.jobs.find({"queue_key": {"$gt": "", "$lt": COURSE_MARK}}, {"queue_key": 1, "course": 1}):
            old = str(doc["queue_key"])
            new = upgraded_key(old, str(doc.get("course") or DEFAULT_COURSE))
            await self.jobs.update_one({"_id": doc["_id"], "queue_key": old}, {"$set": {"queue_key": new}})

    async def insert_plan(self, plan: RunPlan, course: str = DEFAULT_COURSE) -> None:
        """Store every job of a planned run (status `created`), in small batches. The documents
        are built in a thread: 100,000 of them take a noticeable time on the event loop."""
        docs = await asyncio.to_thread(lambda: [new_job_doc(job, plan.run_id, course) for job in plan.jobs])
        await self.insert_many(docs)

    async def insert_many(self, docs: list[dict[str, Any]]) -> None:
        """Insert job documents in small batches: the store serves one operation at a time, so a
        big batch would hold up every heartbeat and claim behind it."""
        for start in range(0, len(docs), WRITE_BATCH):
            with pymongo.timeout(BULK_TIMEOUT_S):
                await self.jobs.insert_many(docs[start : start + WRITE_BATCH], ordered=False)

    async def get(self, job_id: str) -> Job | None:
        doc = await self.jobs.find_one({"_id": oid(job_id)})
        return _job(doc) if doc else None

    async def for_run(self, run_id: str, with_stages: bool = True) -> list[Job]:
        """Every job of a run, in submission order (pre, students, post)."""
        projection = None if with_stages else {"stages": 0}
        with pymongo.timeout(BULK_TIMEOUT_S):
            docs = [_job(d) async for d in self.jobs.find({"run_id": str(run_id)}, projection)]
        kind_order = {JobKind.PRE: 0, JobKind.STUDENT: 1, JobKind.POST: 2}
        return sorted(docs, key=lambda j: (kind_order[j.kind], j.seq))

    async def queue_one(self, job_id: str, course: str = DEFAULT_COURSE) -> bool:
        """created -> queued for one (pre/post-processing) job; False if it was not `created`.
        It carries no status key: those count a run's students (run_status_keys.py)."""
        key = queue_key(course, PRIORITY_PIPELINE, job_id)
        result = await self.jobs.update_one(
            {"_id": oid(job_id), "status": JobStatus.CREATED.value},
            {"$set": {"status": JobStatus.QUEUED.value, "queued_at": time.time(), "queue_key": key}},
        )
        if result.modified_count == 1:
            self.shares.queued(course, key)
        return result.modified_count == 1

    async def queue_students(self, run_id: str, n_students: int, course: str = DEFAULT_COURSE) -> int:
        """created -> queued for every student job of the run; returns how many moved.

        Chunk by chunk, by the `start_chunk` key each student job got at submission (one
        indexed field: nx-27017 uses only the first field of a compound index, so (run_id,
        chunk) scanned the whole run for every chunk). One update_many over a 20k-job run
        holds the store 1.2 s; a chunk of 500 takes ~50-130 ms at any run size, so heartbeats
        and claims slip in between. A crash part-way leaves some jobs `created`; the reaper's
        recovery sweep calls this again for running runs.
        """
        moved = 0
        for chunk in range(-(-n_students // QUEUE_BATCH)):
            key = fresh_key(course)
            with pymongo.timeout(BULK_TIMEOUT_S):
                result = await self.jobs.update_many(
                    {"start_chunk": only(start_chunk(run_id, chunk)), "status": JobStatus.CREATED.value},
                    {"$set": {"status": JobStatus.QUEUED.value, "queued_at": time.time(), "queue_key": key,
                              key_of(JobStatus.QUEUED): str(run_id)},
                     "$unset": {"start_chunk": ""}},
                )  # fmt: skip
            moved += result.modified_count
            if result.modified_count:
                self.shares.queued(course, key)
        return moved

    async def claim_next(self, worker_ref: str, legacy: bool = False) -> Job | None:
        """Atomically hand the first queued job to a worker, or None if the queue is empty.

        Each claim gets a fresh attempt id: a report must name it, so a result from an earlier
        attempt (a worker declared dead that comes back) can never overwrite the current one.
        The filter is a range on queue_key, not `$exists`: nx-27017 answers `$gt` from the sparse
        index but scans the whole collection for `$exists` (claims slowed with every finished
        job kept). Queue keys are non-empty strings, so on MongoDB too `$gt: ""` matches exactly
        the queued jobs. `claimed_legacy` remembers whether the claimer was a legacy grader, so
        that a report-and-next from a non-legacy one needs no worker lookup (see report()).

        Weighted fair share: with two or more courses in this process's view of the busy ones,
        they are tried furthest below their share first, each by one claim on its own range of
        the key; a course found empty is dropped from the view. Then (and at once, with one
        course or none in view: there is no share to weigh) one claim on the whole queue, which
        also finds jobs another API process queued for a course this one has not seen yet. So a
        claim with one busy course, or an idle poll, is one store operation, as before courses:
        a crowd of pollers woken by one job does not cost the store twice.
        A claim counts as running in its course's share from before it is sent (and is taken
        back if it finds nothing): claims in flight at the same moment would otherwise all see
        the same shares and all go to the same course.
        """
        order = self.shares.order()
        if len(order) > 1:
            for course in order:
                self.shares.claimed(course)
                doc = await self._claim({"queue_key": course_range(course)}, worker_ref, legacy)
                if doc is not None:
                    return _job(doc)
                self.shares.ended(course)
                self.shares.drained(course)
        doc = await self._claim({"queue_key": {"$gt": ""}}, worker_ref, legacy)
        if doc is None:
            for course in order:
                self.shares.drained(course)
            return None
        job = _job(doc)
        self.shares.claimed(job.course)
        if job.course not in order:
            self.shares.forget()  # a course the view did not have: read the view again
        return job

    async def _claim(self, match: dict[str, Any], worker_ref: str, legacy: bool) -> dict[str, Any] | None:
        return await self.jobs.find_one_and_update(
            match,
            {
                "$unset": QUEUED_ONLY,
                "$set": {"status": JobStatus.RUNNING.value, "worker": worker_ref, "holder": worker_ref,
                         "attempt_id": secrets.token_hex(8), "started_at": time.time(), "claimed_legacy": legacy},
                "$inc": {"attempts": 1},
                # A run's job takes its status key along (broadway/store/run_status_keys.py).
                "$rename": moved(JobStatus.QUEUED, JobStatus.RUNNING),
            },
            sort=[("queue_key", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )  # fmt: skip

    async def release(self, job_id: str, attempt_id: str) -> bool:
        """Put a just-claimed job back (its poller hung up before receiving it); the attempt does not count."""
        # Rare (a hang-up at the moment of hand-out): one more read for the job's course is fine.
        found = await self.jobs.find_one({"_id": oid(job_id)}, {"course": 1, "kind": 1})
        course = str(found.get("course") or DEFAULT_COURSE) if found else DEFAULT_COURSE
        key = queue_key(course, PRIORITY_REQUEUED, job_id)
        update: dict[str, Any] = {
            "$set": {"status": JobStatus.QUEUED.value, "queue_key": key},
            "$unset": {"attempt_id": "", "worker": "", "holder": ""}, "$inc": {"attempts": -1},
        }  # fmt: skip
        if found and found.get("kind") == JobKind.STUDENT.value:  # its status key moves along
            update["$rename"] = moved(JobStatus.RUNNING, JobStatus.QUEUED)
        result = await self.jobs.update_one(
            {"_id": oid(job_id), "status": JobStatus.RUNNING.value, "attempt_id": attempt_id}, update
        )
        if result.modified_count == 1:
            self.shares.ended(course)
            self.shares.queued(course, key)
        return result.modified_count == 1

    async def queued_in(self, course: str) -> int:
        """How many jobs of a course are queued now: a count over its range of the queue index."""
        return await count(self.jobs, {"queue_key": course_range(course)})

    async def count_held(self, worker_ref: str) -> int:
        """How many jobs a worker is running now."""
        return await count(self.jobs, {"holder": worker_ref})

    async def report(
        self,
        job_id: str,
        worker_ref: str,
        attempt_id: str | None,
        success: bool,
        result: str,
        fingerprint: str,
        error: str | None = None,
        ending: Ending | None = None,
    ) -> Report:
        """Record a job's result, if worker_ref (and attempt_id, when given) holds it, or held it
        last and the job went back to the queue without being claimed again.

        The second case is a grader declared dead mid-job (the 2018 grader sends no heartbeat
        while it works) that then reports: the work is done, so the job leaves the queue with
        that result, in the same atomic update, instead of running again. Once another worker
        has claimed it, the late report is a CONFLICT.
        A single submission ends as its lifecycle decided (`ending`: status, grade, and its
        pending callback, recorded in this same update); without `ending` only a run's job
        matches, and a single one answers WRONG_KIND so that the caller decides its ending.
        The same report again finds the job finished with the same fingerprint: DUPLICATE, no change.
        Anything else is a CONFLICT and changes nothing.
        A RECORDED job comes back without its stages (RECORDED_FIELDS): nothing after a report needs them.
        """
        holds: dict[str, Any] = {"holder": worker_ref}
        held_last: dict[str, Any] = {"status": JobStatus.QUEUED.value, "worker": worker_ref}
        if attempt_id is not None:
            holds["attempt_id"] = held_last["attempt_id"] = attempt_id
        now = time.time()
        status = JobStatus.SUCCEEDED if success else JobStatus.FAILED
        fields: dict[str, Any] = {"status": status.value, "result": result, "finished_at": now}
        fields["report_fingerprint"] = fingerprint
        # A requeued job carries the reason of its earlier attempt in `error`; the report replaces it.
        unset = {"holder": "", **QUEUED_ONLY}
        if ending is not None:
            error = ending.error
            fields.update(status=ending.status.value, grade=ending.grade, comments=ending.comments)
            if ending.callback_max_age_s is not None:
                fields.update(pending_delivery_fields(now, ending.callback_max_age_s))
            if ending.orca_response is not None:
                fields["orca_response"] = ending.orca_response
        if error:
            fields["error"] = error
        else:
            unset["error"] = ""
        kind = JobKind.SINGLE.value if ending is not None else {"$ne": JobKind.SINGLE.value}
        # One case at a time, the usual one first: nx-27017 scans the whole collection for an
        # `$or` beside the `_id` (3 ms at 3k jobs, growing as the run's jobs finish) and answers
        # each case alone from `_id`. Each update is atomic on its own condition, so the outcome
        # is one that the single `$or` could have had at the moment of the second.
        job_oid = oid(job_id)
        for case, was in ((holds, JobStatus.RUNNING), (held_last, JobStatus.QUEUED)):
            update: dict[str, Any] = {"$set": fields, "$unset": unset}
            if ending is None:  # a run's job: its status key moves along (run_status_keys.py)
                update["$rename"] = moved(was, status)
            # Not the stages nor the result (up to --max-result-bytes) back: the caller has the result.
            doc = await self.jobs.find_one_and_update(
                {"_id": job_oid, "kind": kind, **case},
                update,
                RECORDED_FIELDS,
                return_document=ReturnDocument.AFTER,
            )
            if doc:
                doc["result"] = result
                freed = case is holds
                if freed:
                    self.shares.ended(str(doc.get("course") or DEFAULT_COURSE))
                return Report(ReportOutcome.RECORDED, _job(doc), freed, bool(doc.get("claimed_legacy", True)))
        current = await self.jobs.find_one({"_id": oid(job_id)})
        if current is None:
            return Report(ReportOutcome.NOT_FOUND, None)
        same_report = (
            current.get("worker") == worker_ref
            and current.get("report_fingerprint") == fingerprint
            and (attempt_id is None or current.get("attempt_id") == attempt_id)
        )
        if same_report:
            return Report(ReportOutcome.DUPLICATE, _job(current))
        if (current.get("kind") == JobKind.SINGLE.value) != (ending is not None):
            return Report(ReportOutcome.WRONG_KIND, _job(current))
        return Report(ReportOutcome.CONFLICT, _job(current))

    async def reap_worker(
        self,
        worker_ref: str,
        max_attempts: int,
        reason: str,
        keep: frozenset[str] = frozenset(),
        claimed_before: float | None = None,
        callback_max_age_s: float = 24 * 3600.0,
    ) -> Reaped:
        """Take jobs away from a worker: back to the queue, or failed after max_attempts.

        All its jobs when it is dead; for a live worker, those it no longer runs: not in `keep`
        and claimed before `claimed_before` (a claim still on its way to the worker is not lost).
        """
        requeued: list[Job] = []
        failed: list[Job] = []
        async for doc in self.jobs.find({"holder": worker_ref}):
            if str(doc["_id"]) in keep:
                continue
            if claimed_before is not None and doc.get("started_at", 0) >= claimed_before:
                continue
            holder = {"_id": doc["_id"], "holder": worker_ref, "attempt_id": doc.get("attempt_id")}
            attempts = doc.get("attempts", 0)
            course = str(doc.get("course") or DEFAULT_COURSE)
            if attempts < max_attempts:
                # From a dead worker, `worker` and `attempt_id` stay: they name the attempt whose
                # late report is still accepted while nobody has claimed the job again (see
                # report()). A live worker that does not list the job never received it.
                forget = {"holder": ""} if claimed_before is None else {"holder": "", "worker": "", "attempt_id": ""}
                key = queue_key(course, PRIORITY_REQUEUED, doc["_id"])
                update: dict[str, Any] = {
                    "$set": {"status": JobStatus.QUEUED.value, "queue_key": key,
                             "error": f"attempt {attempts}: {reason}"},
                    "$unset": forget,
                }  # fmt: skip
                new_status = JobStatus.QUEUED
                bucket = requeued
            else:
                error = f"infrastructure: gave up after {attempts} attempts; last: {reason}"
                now = time.time()
                ended: dict[str, Any] = {"status": JobStatus.FAILED.value, "error": error, "finished_at": now}
                if doc.get("callback_url"):  # the LMS is told in the same update
                    ended.update(pending_delivery_fields(now, callback_max_age_s))
                update = {"$set": ended, "$unset": {"holder": ""}}
                new_status = JobStatus.FAILED
                bucket = failed
            if doc.get("kind") == JobKind.STUDENT.value:  # its status key moves along
                update["$rename"] = moved(JobStatus.RUNNING, new_status)
            after = await self.jobs.find_one_and_update(holder, update, return_document=ReturnDocument.AFTER)
            if after:
                bucket.append(_job(after))
                self.shares.ended(course)
                if after.get("queue_key"):
                    self.shares.queued(course, after["queue_key"])
        return Reaped(requeued=requeued, failed=failed)

    async def student_counts(self, run: Run) -> dict[JobStatus, int]:
        """How many of a run's students are in each status.

        One aggregate of index counts, one per status key (broadway/store/run_status_keys.py:
        ~1-3 ms at 10,000 students on nx-27017, at any run size); a run stored before those
        keys by a $group over its jobs, which reads every one (~22-37 ms at 10,000 students,
        ~0.4 s at 100,000).
        """
        if not run.keyed_statuses:
            return await self._grouped_student_counts(run.id)
        counts = {status: 0 for status in JobStatus}
        cursor = await self.jobs.aggregate(counts_pipeline(self.jobs.name, run.id))
        async for row in cursor:
            counts[JobStatus(row["status"])] = int(row["n"])
        counts[JobStatus.CREATED] = run.n_students - sum(counts.values())
        return counts

    async def _grouped_student_counts(self, run_id: str) -> dict[JobStatus, int]:
        """student_counts for a run without status keys: a $group over its students."""
        match = {"run_id": str(run_id), "kind": JobKind.STUDENT.value}
        counts = {status: 0 for status in JobStatus}
        with pymongo.timeout(BULK_TIMEOUT_S):
            cursor = await self.jobs.aggregate([{"$match": match}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}])
            async for row in cursor:
                counts[JobStatus(row["_id"])] = row["n"]
        return counts

    async def cancel_jobs(self, run: Run, running: bool = True) -> int:
        """Cancel a run's unfinished jobs (those running too, if `running`); returns how many.

        A run with status keys goes in batches found by those keys, one short operation each,
        so heartbeats and claims slip in between: one update_many over a 100,000-student run
        held the store 17 s, and every request waiting behind it timed out. A job requeued
        while the batches go (running -> queued) is caught by the next round. Runs from before
        the keys: one update_many per kind and status, as before.
        """
        if not run.keyed_statuses:
            cancelled = await self.cancel_unstarted(run.id)
            return cancelled + (await self.cancel_running(run.id) if running else 0)
        cancelled = await self._cancel_pipeline_jobs(run, running)
        cancelled += await self._cancel_created_students(run)
        moving = [JobStatus.QUEUED, JobStatus.RUNNING] if running else [JobStatus.QUEUED]
        for _ in range(3):
            this_round = 0
            for status in moving:
                this_round += await self._cancel_keyed_students(run.id, status)
            cancelled += this_round
            if not this_round:
                break
        self.shares.forget()
        return cancelled

    async def _cancel_pipeline_jobs(self, run: Run, running: bool) -> int:
        ids = [oid(job_id) for job_id in (run.pre_job_id, run.post_job_id) if job_id]
        if not ids:
            return 0
        statuses = ACTIVE if running else [JobStatus.CREATED.value, JobStatus.QUEUED.value]
        result = await self.jobs.update_many(
            {"_id": {"$in": ids}, "status": {"$in": statuses}},
            {"$set": _cancelled(run.id, False), "$unset": QUEUED_ONLY | {"holder": ""}},
        )
        return result.modified_count

    async def _cancel_created_students(self, run: Run) -> int:
        """Students not queued yet, by the start chunks they were stored with (none left once started)."""
        cancelled = 0
        for chunk in range(-(-run.n_students // QUEUE_BATCH)):
            result = await self.jobs.update_many(
                {"start_chunk": only(start_chunk(run.id, chunk)), "status": JobStatus.CREATED.value},
                {"$set": _cancelled(run.id, True), "$unset": {"start_chunk": ""}},
            )
            cancelled += result.modified_count
        return cancelled

    async def _cancel_keyed_students(self, run_id: str, status: JobStatus) -> int:
        """Students in `status` (queued or running), QUEUE_BATCH at a time by their status key."""
        unset = (QUEUED_ONLY if status is JobStatus.QUEUED else {"holder": ""}) | unkeyed(status)
        cancelled = 0
        while True:
            found = self.jobs.find({key_of(status): run_id}, {"_id": 1}, limit=QUEUE_BATCH, batch_size=QUEUE_BATCH)
            ids = [doc["_id"] async for doc in found]
            if not ids:
                return cancelled
            result = await self.jobs.update_many(
                {"_id": {"$in": ids}, "status": status.value}, {"$set": _cancelled(run_id, True), "$unset": unset}
            )
            if not result.modified_count:
                # Keys naming jobs no longer in that status: never expected. Rather than loop on
                # them, cancel the rest by the run's own index, as runs without keys are.
                log.warning("run %s: %s keys out of step with the jobs; cancelling by run", run_id, status.value)
                return cancelled + await self._cancel_by_run(run_id, status, unset)
            cancelled += result.modified_count

    async def _cancel_by_run(self, run_id: str, status: JobStatus, unset: dict[str, str]) -> int:
        with pymongo.timeout(BULK_TIMEOUT_S):
            result = await self.jobs.update_many(
                {"run_id": only(run_id), "kind": JobKind.STUDENT.value, "status": status.value},
                {"$set": _cancelled(run_id, True), "$unset": unset},
            )
        return result.modified_count

    async def cancel_unstarted(self, run_id: str) -> int:
        """created/queued -> cancelled for every job of a run that has not started (runs without status keys)."""
        with pymongo.timeout(BULK_TIMEOUT_S):
            result = await self.jobs.update_many(
                {"run_id": only(str(run_id)), "status": {"$in": [JobStatus.CREATED.value, JobStatus.QUEUED.value]}},
                {"$set": _cancelled(run_id, False), "$unset": QUEUED_ONLY},
            )
        self.shares.forget()
        return result.modified_count

    async def cancel_running(self, run_id: str) -> int:
        """running -> cancelled (runs without status keys); the graders' later reports for these
        jobs are refused (409)."""
        with pymongo.timeout(BULK_TIMEOUT_S):
            result = await self.jobs.update_many(
                {"run_id": only(str(run_id)), "status": JobStatus.RUNNING.value},
                {"$set": _cancelled(run_id, False), "$unset": {"holder": ""}},
            )
        self.shares.forget()
        return result.modified_count

    async def roster(self, run_id: str) -> AsyncIterator[Job]:
        """The run's student jobs, for the roster handed to pre/post-processing."""
        with pymongo.timeout(BULK_TIMEOUT_S):
            cursor = self.jobs.find({"run_id": str(run_id), "kind": JobKind.STUDENT.value}, {"stages": 0})
            docs = await cursor.to_list()
        for doc in docs:
            yield _job(doc)

    async def cancelled_among(self, job_ids: frozenset[str]) -> list[str]:
        """Which of these jobs (a grader's running ones; a run's or single) have been cancelled: one `$in` on `_id`."""
        oids = [oid for oid in (parse_id(j) for j in job_ids) if oid is not None]
        if not oids:
            return []
        cursor = self.jobs.find({"_id": {"$in": oids}, "status": JobStatus.CANCELLED.value}, {"_id": 1})
        return sorted([str(doc["_id"]) async for doc in cursor])
