"""Grading runs in the `runs` collection."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from broadway.courses import Owner
from broadway.models import Run, RunStatus
from broadway.store.deliveries import pending_delivery_fields
from broadway.store.ids import oid
from broadway.store.run_status_keys import RUN_MARK


def _run(doc: dict[str, Any]) -> Run:
    return Run(
        id=str(doc["_id"]),
        status=RunStatus(doc["status"]),
        n_students=doc["n_students"],
        pre_job_id=str(doc["pre_job_id"]) if doc.get("pre_job_id") else None,
        post_job_id=str(doc["post_job_id"]) if doc.get("post_job_id") else None,
        created_at=doc["created_at"],
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        error=doc.get("error"),
        callback_url=doc.get("callback_url"),
        course=Owner.of(doc).course,
        keyed_statuses=bool(doc.get(RUN_MARK)),
    )


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    students_done: int
    n_students: int
    # When a student job last finished (or the run started).
    last_progress: float


class RunStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.runs = db.runs

    async def insert(
        self,
        run_id: str,
        n_students: int,
        pre_job_id: str | None,
        post_job_id: str | None,
        callback_url: str | None = None,
        owner: Owner | None = None,
    ) -> Run:
        """Record a run whose jobs are already stored: a run that exists always has all its jobs.
        It belongs to `owner` (the default course when None)."""
        owner = owner or Owner()
        doc = {
            "_id": ObjectId(run_id),
            "status": RunStatus.CREATED.value,
            "n_students": n_students,
            # References as hex strings: nx-27017 cannot match an ObjectId outside _id.
            "pre_job_id": str(pre_job_id) if pre_job_id else None,
            "post_job_id": str(post_job_id) if post_job_id else None,
            "students_done": 0,
            "created_at": time.time(),
            "course": owner.course,
            "owner_subject": owner.subject,
            RUN_MARK: True,
        }
        if callback_url:
            doc["callback_url"] = callback_url
        await self.runs.insert_one(doc)
        return _run(doc)

    async def get(self, run_id: str) -> Run | None:
        """The run, or None if there is none with that id."""
        doc = await self.runs.find_one({"_id": oid(run_id)})
        return _run(doc) if doc else None

    async def get_owned(self, run_id: str) -> tuple[Run, Owner] | None:
        """The run and who owns it, or None if there is none with that id."""
        doc = await self.runs.find_one({"_id": oid(run_id)})
        return (_run(doc), Owner.of(doc)) if doc else None

    async def mark_started(self, run_id: str) -> Run | None:
        """created -> running; None if the run is not (or no longer) `created`."""
        doc = await self.runs.find_one_and_update(
            {"_id": oid(run_id), "status": RunStatus.CREATED.value},
            {"$set": {"status": RunStatus.RUNNING.value, "started_at": time.time()}},
            return_document=ReturnDocument.AFTER,
        )
        return _run(doc) if doc else None

    async def mark_finished(
        self, run_id: str, status: RunStatus, error: str | None = None, callback_max_age_s: float | None = None
    ) -> bool:
        """created/running -> a final status; False if the run had already ended (someone else finished it).

        With callback_max_age_s (the run has a callback_url) the same update records its pending callback.
        """
        now = time.time()
        fields: dict[str, Any] = {"status": status.value, "finished_at": now}
        if callback_max_age_s is not None:
            fields.update(pending_delivery_fields(now, callback_max_age_s))
        if error:
            fields["error"] = error
        unfinished = [RunStatus.CREATED.value, RunStatus.RUNNING.value]
        result = await self.runs.update_one({"_id": oid(run_id), "status": {"$in": unfinished}}, {"$set": fields})
        return result.modified_count == 1

    async def count_student_done(self, run_id: str, finished: int = 1) -> tuple[int, int]:
        """Count `finished` more finished student jobs; returns (students done, students in the run).

        Only a hint that the students may all be done (a crash between a job's report and this
        increment leaves it low); the scheduler confirms with an exact count before acting.
        """
        doc = await self.runs.find_one_and_update(
            {"_id": oid(run_id)},
            {"$inc": {"students_done": finished}, "$set": {"progress_at": time.time()}},
            return_document=ReturnDocument.AFTER,
        )
        return (int(doc["students_done"]), int(doc["n_students"])) if doc else (0, 0)

    async def running_progress(self) -> list[RunProgress]:
        """Every run in progress with its progress counter, for the recovery sweep to tell the
        runs that may need an exact recount from those plainly moving along."""
        fields = {"students_done": 1, "n_students": 1, "progress_at": 1, "started_at": 1, "created_at": 1}
        cursor = self.runs.find({"status": RunStatus.RUNNING.value}, fields)
        return [
            RunProgress(
                run_id=str(doc["_id"]),
                students_done=int(doc.get("students_done", 0)),
                n_students=int(doc.get("n_students", 0)),
                last_progress=float(doc.get("progress_at") or doc.get("started_at") or doc.get("created_at") or 0.0),
            )
            async for doc in cursor
        ]
