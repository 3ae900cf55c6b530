"""Reading a run's jobs a page at a time, and counting them, in short store operations.

A `find` over a whole run holds nx-27017 (which serves one operation at a time) for as long as
it builds the result: 0.37 s for a 10,000-student run, 5.8 s at 100,000, with every heartbeat
and claim waiting behind it. nx-27017 pushes skip/limit down to SQLite, though: a page of 500
jobs by the `run_id` index costs ~12 ms wherever it starts. Jobs come back in insertion order,
which is submission order (pre-processing, students by seq, post-processing) on nx-27017 and on
MongoDB's `run_id` index (ties in record order), so a page of students is a skip past the
pre-processing job. Each page is checked against the seqs it must hold; should the order ever
differ, that page is read again by seq range (slower on nx-27017, correct everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pymongo
from pymongo.asynchronous.database import AsyncDatabase

from broadway.models import Job, JobKind, Run
from broadway.store.ids import parse_id
from broadway.store.jobs import BULK_TIMEOUT_S, _job

# Jobs per store operation when a whole run is read: ~12 ms each on nx-27017, so a heartbeat
# queued behind one waits about that long.
PAGE_SIZE = 500
# Runs up to this many students, whose fixed parts (stages, student) take up to this many bytes,
# have their whole status's moving fields read in one operation (all_students_moving): ~0.15 s
# of the store at 10,000 students with one small stage each. The store's time grows with the
# documents' size, projected or not (10,000 jobs of 20 stages: 0.8 s), so larger runs are read a
# page at a time and heartbeats get in between.
WHOLE_READ_MAX = 10_000
WHOLE_READ_MAX_BYTES = 4 << 20
# What changes in a student job after submission (broadway/run_status_parts.py keeps the rest).
MOVING_FIELDS = ("status", "result", "error", "attempts", "queued_at", "started_at", "finished_at")
_MOVING_PROJECTION = {"_id": 0, "kind": 1, "seq": 1, **{name: 1 for name in MOVING_FIELDS}}


@dataclass(frozen=True)
class PipelineJobs:
    """A run's pre- and post-processing jobs (None where the run has none)."""

    pre: Job | None
    post: Job | None


class RunPages:
    def __init__(self, db: AsyncDatabase) -> None:
        self.jobs = db.jobs

    async def pipeline_jobs(self, run: Run) -> PipelineJobs:
        """The run's pre- and post-processing jobs: one `_id` lookup each."""
        return PipelineJobs(pre=await self._by_id(run.pre_job_id), post=await self._by_id(run.post_job_id))

    async def _by_id(self, job_id: str | None) -> Job | None:
        oid = parse_id(job_id)
        if oid is None:
            return None
        doc = await self.jobs.find_one({"_id": oid})
        return _job(doc) if doc else None

    async def students(self, run: Run, offset: int, limit: int) -> list[Job]:
        """Student jobs seq offset .. offset+limit-1 (fewer at the end of the run), in seq order.

        One store operation for up to PAGE_SIZE jobs; callers reading more page themselves.
        """
        limit = min(limit, run.n_students - offset)
        if limit <= 0 or offset < 0:
            return []
        skip = offset + (1 if run.pre_job_id else 0)
        with pymongo.timeout(BULK_TIMEOUT_S):
            docs = await self.jobs.find({"run_id": run.id}, skip=skip, limit=limit, batch_size=limit).to_list()
        expected = list(range(offset, offset + limit))
        if [(d.get("kind"), d.get("seq")) for d in docs] != [(JobKind.STUDENT.value, seq) for seq in expected]:
            docs = await self._students_by_seq(run, offset, limit)
        return [_job(d) for d in docs]

    async def all_students_moving(self, run: Run) -> list[dict[str, Any]] | None:
        """Every student's moving fields (MOVING_FIELDS, absent ones None) in seq order, in ONE
        store operation; None if the run's jobs are not exactly its students 0..n-1 (read it by
        pages then).

        One aggregate with an inclusion $project: nx-27017 then extracts those fields alone
        instead of decoding whole documents (10,000 students: ~0.13 s, against ~0.4 s for the
        whole documents by pages), but it holds the store that long, and a $skip in an aggregate
        is not pushed down (pages of it cost O(n) each): callers use it for runs of at most
        WHOLE_READ_MAX students only.
        """
        pipeline: list[dict[str, Any]] = [{"$match": {"run_id": run.id}}, {"$project": _MOVING_PROJECTION}]
        with pymongo.timeout(BULK_TIMEOUT_S):
            # In one batch: nx-27017 answers in batches of ~100 by default, each a round trip.
            docs = await (await self.jobs.aggregate(pipeline, batchSize=run.n_students + 2)).to_list()
        students = sorted((d for d in docs if d.get("kind") == JobKind.STUDENT.value), key=lambda d: int(d["seq"]))
        if [d["seq"] for d in students] != list(range(run.n_students)):
            return None
        return [{name: doc.get(name) for name in MOVING_FIELDS} for doc in students]

    async def _students_by_seq(self, run: Run, offset: int, limit: int) -> list[dict[str, Any]]:
        match = {"run_id": run.id, "kind": JobKind.STUDENT.value, "seq": {"$gte": offset, "$lt": offset + limit}}
        with pymongo.timeout(BULK_TIMEOUT_S):
            docs = await self.jobs.find(match).to_list()
        return sorted(docs, key=lambda d: int(d["seq"]))
