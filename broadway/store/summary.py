"""Read-only queries for the dashboard and the metrics gauges.

Each is bounded and follows docs/store-notes.md: counts through aggregate ($match on one indexed
key, then $group or $count), never count_documents; every find has a limit; no filter on one
field sorted by another (the few results are sorted here instead).
- queued jobs carry `queue_key`, running ones `holder` (both sparse indexes), matched by range;
- live workers carry `lease_until` (sparse index), the dead are found by `last_seen`;
- runs by their `status` index; a run's jobs by `run_id`.
"""

from __future__ import annotations

import time
from typing import Any

import pymongo
from pymongo.asynchronous.database import AsyncDatabase

from broadway.models import JobStatus, RunStatus
from broadway.store.course_shares import CourseShares
from broadway.store.ids import parse_id
from broadway.store.jobs import BULK_TIMEOUT_S
from broadway.store.queue_keys import course_range

DEFAULT_COURSE = "default"
# Upper bounds on what one summary reads; a cluster beyond them shows the first ones.
MAX_WORKERS = 200
MAX_HELD_JOBS = 2000
MAX_RUNS = 20
MAX_SINGLE_JOBS = 20
# Dead workers stay on the dashboard this long after their last news.
RECENT_DEAD_S = 3600.0
# Range matches on the sparse indexed keys: nx-27017 answers `{"$gt": ""}` from the index
# (1.5 ms at 20k queued jobs) but scans for `{"$exists": true}` (10-65 ms).
QUEUED = {"queue_key": {"$gt": ""}}
RUNNING = {"holder": {"$gt": ""}}
LIVE_WORKER = {"lease_until": {"$gt": 0}}
ACTIVE_RUN_STATUSES = [RunStatus.CREATED.value, RunStatus.RUNNING.value]
FINISHED_RUN_STATUSES = [RunStatus.SUCCEEDED.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value]


def _course(value: Any) -> str:
    return str(value) if value else DEFAULT_COURSE


class SummaryStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.jobs = db.jobs
        self.runs = db.runs
        self.workers = db.workers

    async def _group(self, collection: Any, match: dict[str, Any], key: str) -> dict[Any, int]:
        cursor = await collection.aggregate([{"$match": match}, {"$group": {"_id": f"${key}", "n": {"$sum": 1}}}])
        return {row["_id"]: int(row["n"]) async for row in cursor}

    async def queue_depth(self) -> list[dict[str, Any]]:
        """Queued and running jobs per course: [{"course", "queued", "running"}], busiest first.

        Queued: one index-only count per course over its range of the queue key (1.5 ms at 20k
        queued; a $group by course would read every queued document: 33 ms at 20k), the courses
        found by a skip-scan of that index (broadway/store/course_shares.py). Running: one $group
        over the running jobs, never more than the cluster's slots. Courses with neither are left out.
        """
        shares = CourseShares(self.jobs.database)
        heads, running = await shares.busy_courses(), await self._group(self.jobs, RUNNING, "course")
        running = {_course(course): n for course, n in running.items()}
        rows: list[dict[str, Any]] = []
        for course in sorted(set(heads) | set(running)):
            queued = await self._count(self.jobs, {"queue_key": course_range(course)}) if course in heads else 0
            rows.append({"course": course, "queued": queued, "running": running.get(course, 0)})
        rows.sort(key=lambda row: (-(row["queued"] + row["running"]), row["course"]))
        return rows or [{"course": DEFAULT_COURSE, "queued": 0, "running": 0}]

    async def _count(self, collection: Any, match: dict[str, Any]) -> int:
        cursor = await collection.aggregate([{"$match": match}, {"$count": "n"}])
        rows = await cursor.to_list()
        return int(rows[0]["n"]) if rows else 0

    async def worker_totals(self) -> dict[str, int]:
        """{"alive", "slots", "in_use"} over the live workers."""
        cursor = await self.workers.aggregate(
            [{"$match": LIVE_WORKER},
             {"$group": {"_id": None, "alive": {"$sum": 1}, "slots": {"$sum": "$slots"}}}]
        )  # fmt: skip
        rows = await cursor.to_list()
        alive = int(rows[0]["alive"]) if rows else 0
        slots = int(rows[0]["slots"]) if rows else 0
        return {"alive": alive, "slots": slots, "in_use": await self._count(self.jobs, RUNNING)}

    async def workers_overview(self, now: float | None = None) -> list[dict[str, Any]]:
        """Live workers, and those dead within the last hour, each with the jobs it holds.

        Shows a worker's name and a short prefix of its ref (a digest); never its id.
        """
        now = time.time() if now is None else now
        projection = {"name": 1, "slots": 1, "alive": 1, "last_seen": 1, "legacy": 1}
        live = await self.workers.find(LIVE_WORKER, projection).to_list(MAX_WORKERS)
        recent = await self.workers.find({"last_seen": {"$gt": now - RECENT_DEAD_S}}, projection).to_list(MAX_WORKERS)
        docs = {d["_id"]: d for d in live}
        for doc in recent:
            docs.setdefault(doc["_id"], doc)
        held: dict[str, list[dict[str, Any]]] = {}
        cursor = self.jobs.find(RUNNING, {"holder": 1, "run_id": 1, "kind": 1, "started_at": 1, "student": 1})
        for job in await cursor.to_list(MAX_HELD_JOBS):
            held.setdefault(job["holder"], []).append(
                {"job_id": str(job["_id"]), "run_id": job.get("run_id") or None, "kind": job.get("kind"),
                 "started_at": job.get("started_at")}
            )  # fmt: skip
        rows = []
        for ref, doc in docs.items():
            jobs = sorted(held.get(ref, []), key=lambda j: j["started_at"] or 0)
            rows.append({
                "name": doc.get("name") or "?",
                "ref": str(ref)[:8],
                "alive": bool(doc.get("alive")),
                "legacy": bool(doc.get("legacy")),
                "slots": int(doc.get("slots", 1)),
                "in_use": len(jobs),
                "jobs": jobs,
                "last_seen": doc.get("last_seen"),
                "seconds_since_heartbeat": round(max(0.0, now - float(doc.get("last_seen") or now)), 1),
            })  # fmt: skip
        rows.sort(key=lambda w: (not w["alive"], w["name"], w["ref"]))
        return rows

    async def recent_runs(self) -> list[dict[str, Any]]:
        """Active runs, and the latest finished ones, newest first (at most MAX_RUNS)."""
        projection = {"status": 1, "n_students": 1, "created_at": 1, "started_at": 1, "finished_at": 1,
                      "students_done": 1, "error": 1, "course": 1, "owner_subject": 1}  # fmt: skip
        active = await self.runs.find({"status": {"$in": ACTIVE_RUN_STATUSES}}, projection).to_list(MAX_RUNS * 10)
        active.sort(key=lambda d: d.get("created_at") or 0, reverse=True)
        runs = active[:MAX_RUNS]
        if len(runs) < MAX_RUNS:
            # The newest finished runs: _id order is creation order; no filter, so no cross-field sort.
            finished = await (
                self.runs.find({}, projection).sort("_id", pymongo.DESCENDING).limit(MAX_RUNS * 2).to_list()
            )
            seen = {d["_id"] for d in runs}
            runs += [d for d in finished if d["_id"] not in seen and d.get("status") in FINISHED_RUN_STATUSES]
            runs = runs[:MAX_RUNS]
        return [
            {"id": str(d["_id"]), "status": d.get("status"), "n_students": int(d.get("n_students", 0)),
             "students_done": int(d.get("students_done", 0)), "created_at": d.get("created_at"),
             "started_at": d.get("started_at"), "finished_at": d.get("finished_at"), "error": d.get("error"),
             "course": _course(d.get("course")), "subject": d.get("owner_subject")}
            for d in runs
        ]  # fmt: skip

    async def run_job_counts(self, run_id: str) -> dict[str, int]:
        """A run's jobs by status (every status present, zeros included)."""
        counts = {status.value: 0 for status in JobStatus}
        with pymongo.timeout(BULK_TIMEOUT_S):
            for status, n in (await self._group(self.jobs, {"run_id": run_id}, "status")).items():
                counts[str(status)] = n
        return counts

    async def recent_single_jobs(self) -> list[dict[str, Any]]:
        """The newest single submissions (jobs of kind "single"), newest first.

        `kind` has no index: this scans the jobs (19 ms at 20k), so the dashboard asks for it
        only every few seconds. An indexed key for single jobs would make it a lookup.
        """
        projection = {"status": 1, "kind": 1, "queued_at": 1, "started_at": 1, "finished_at": 1, "error": 1,
                      "course": 1, "attempts": 1, "owner_subject": 1}  # fmt: skip
        docs = await self.jobs.find({"kind": "single"}, projection).limit(MAX_SINGLE_JOBS * 10).to_list()
        docs.sort(key=lambda d: d["_id"], reverse=True)
        return [
            {"job_id": str(d["_id"]), "status": d.get("status"), "course": _course(d.get("course")),
             "queued_at": d.get("queued_at"), "started_at": d.get("started_at"),
             "finished_at": d.get("finished_at"), "attempts": d.get("attempts", 0), "error": d.get("error"),
             "subject": d.get("owner_subject")}
            for d in docs[:MAX_SINGLE_JOBS]
        ]  # fmt: skip

    async def job(self, job_id_text: str) -> dict[str, Any] | None:
        """One job as the job page shows it (its result still a string), or None."""
        oid = parse_id(job_id_text)
        if oid is None:
            return None
        doc = await self.jobs.find_one({"_id": oid})
        if doc is None:
            return None
        # Read field by field, not through models.Job: kinds this code does not know yet still show.
        holder = doc.get("holder") or doc.get("worker")
        worker_name = None
        if holder:
            worker = await self.workers.find_one({"_id": holder}, {"name": 1})
            worker_name = worker.get("name") if worker else None
        stages = doc.get("stages") or []
        # A run's job is owned as its run is.
        owner_doc = doc
        if doc.get("run_id"):
            run_id = parse_id(str(doc["run_id"]))
            owner_doc = (
                (await self.runs.find_one({"_id": run_id}, {"course": 1, "owner_subject": 1}) or {}) if run_id else {}
            )
        return {
            "job_id": str(doc["_id"]), "run_id": doc.get("run_id") or None, "kind": doc.get("kind"),
            "status": doc.get("status"), "attempts": doc.get("attempts", 0), "error": doc.get("error"),
            "student": doc.get("student"), "queued_at": doc.get("queued_at"), "started_at": doc.get("started_at"),
            "finished_at": doc.get("finished_at"), "worker_name": worker_name,
            "course": _course(owner_doc.get("course")), "subject": owner_doc.get("owner_subject"),
            "result": doc.get("result"),
            "stage_images": [s.get("image") for s in stages if isinstance(s, dict)],
        }  # fmt: skip
