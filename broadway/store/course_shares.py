"""One API process's view of each course's queue and running jobs, for the fair-share claim.

Reading the whole picture from the store at every claim would multiply a claim's cost; instead
the view is read at most every REFRESH_S by whichever claim comes first, and kept current in
between by what this process itself does (claims, reports, give-backs, jobs it queues). Jobs
queued or finished through another API process show up at the next refresh, so with several
API processes the shares are right to within REFRESH_S.

A refresh is a few short index reads whatever the queue's size:
- which courses have queued jobs: a skip-scan of the `queue_key` index, one `find_one` per
  course that has any (the first key past the previous course's range);
- running jobs per course: one $group over the running jobs (`holder`, sparse index), which
  are never more than the cluster's slots;
- weights: the `courses` collection, every WEIGHTS_REFRESH_S.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from broadway.courses import DEFAULT_COURSE
from broadway.fair_share import DEFAULT_WEIGHT, CourseQueue, share_order
from broadway.store.queue_keys import COURSE_MARK, course_of_key, tail_of

log = logging.getLogger(__name__)

REFRESH_S = 0.5
WEIGHTS_REFRESH_S = 5.0
# A refresh reads at most this many courses' heads; a cluster with more busy courses than this
# serves the rest through the claim's fallback (first queued job of any course).
MAX_BUSY_COURSES = 500


class CourseShares:
    def __init__(self, db: AsyncDatabase) -> None:
        self.jobs = db.jobs
        self.courses = db.courses
        self.running: dict[str, int] = {}
        # Courses believed to have queued jobs -> their first job's key tail (tie-break).
        self.heads: dict[str, str] = {}
        self.weights: dict[str, float] = {}
        self._refreshed_at = float("-inf")
        self._weights_at = float("-inf")
        self._refresh: asyncio.Future[None] | None = None
        # This process's own changes since the running refresh began (see queued() and refresh()).
        self._queued_meanwhile: dict[str, str] = {}
        self._counted_meanwhile: set[str] = set()

    def order(self) -> list[str]:
        """The courses with queued jobs, furthest below their share first. A refresh that is due
        is started in the background: a claim never waits for it (it would add its store reads to
        the claim's latency); it uses the view as it is, and the fallback claim covers the rest."""
        self._refresh_if_due()
        queues = [
            CourseQueue(course, self.running.get(course, 0), self.weights.get(course, DEFAULT_WEIGHT), head)
            for course, head in self.heads.items()
        ]
        return share_order(queues)

    # What this process does, applied at once. The next refresh replaces it with the store's
    # view, except what happened while that refresh was reading: it may not have seen it.
    def queued(self, course: str, key: str) -> None:
        head = tail_of(key)
        for heads in (self.heads, self._queued_meanwhile):
            current = heads.get(course)
            if current is None or head < current:
                heads[course] = head

    def claimed(self, course: str) -> None:
        self._count(course, +1)

    def ended(self, course: str) -> None:
        self._count(course, -1)

    def _count(self, course: str, change: int) -> None:
        self.running[course] = max(self.running.get(course, 0) + change, 0)
        self._counted_meanwhile.add(course)

    def drained(self, course: str) -> None:
        self.heads.pop(course, None)

    def forget(self) -> None:
        """Read everything again at the next claim (after bulk changes such as a cancelled run)."""
        self._refreshed_at = float("-inf")

    def _refresh_if_due(self) -> None:
        if time.monotonic() - self._refreshed_at < REFRESH_S or self._refresh is not None:
            return  # fresh enough, or being read now: use what there is
        self._refresh = asyncio.ensure_future(self.refresh())
        self._refresh.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Future[None]) -> None:
        self._refresh = None
        if not task.cancelled() and task.exception() is not None:
            # The store is down, say: the claims that need it report that; try again at the next one.
            log.debug("fair-share view not refreshed: %s", task.exception())

    async def refresh(self) -> None:
        """Read the view from the store now."""
        started = time.monotonic()
        self._refreshed_at = started  # a failed read is not retried before REFRESH_S either
        self._queued_meanwhile, self._counted_meanwhile = {}, set()
        if started - self._weights_at >= WEIGHTS_REFRESH_S:
            self.weights = await self._weights()
            self._weights_at = started
        heads = await self.busy_courses()
        running = await self._running()
        for course, head in self._queued_meanwhile.items():
            heads[course] = min(head, heads.get(course, head))
        # A claim or report during the read may or may not be in the store's count: for those
        # courses keep this process's own count (exact for what it did itself) until a refresh
        # that nothing of theirs overlaps.
        for course in self._counted_meanwhile:
            running[course] = self.running.get(course, 0)
        self.heads, self.running = heads, running

    async def _weights(self) -> dict[str, float]:
        weights = {}
        async for doc in self.courses.find({}, {"weight": 1}):
            weight = doc.get("weight")
            weights[str(doc["_id"])] = float(weight) if isinstance(weight, int | float) else DEFAULT_WEIGHT
        return weights

    async def busy_courses(self) -> dict[str, str]:
        """Every course with queued jobs -> its first job's key tail."""
        heads: dict[str, str] = {}
        after: dict[str, Any] = {"$gte": COURSE_MARK}
        for _ in range(MAX_BUSY_COURSES):
            doc = await self.jobs.find_one(
                {"queue_key": after}, {"queue_key": 1, "_id": 0}, sort=[("queue_key", ASCENDING)]
            )
            course = course_of_key(doc["queue_key"]) if doc else None
            if doc is None or course is None:
                break
            heads[course] = tail_of(doc["queue_key"])
            # Past every key of this course: see broadway/store/queue_keys.py for why "0" ends it.
            after = {"$gte": f"{COURSE_MARK}{course}0"}
        return heads

    async def _running(self) -> dict[str, int]:
        cursor = await self.jobs.aggregate(
            [{"$match": {"holder": {"$gt": ""}}}, {"$group": {"_id": "$course", "n": {"$sum": 1}}}]
        )
        return {str(row["_id"] or DEFAULT_COURSE): int(row["n"]) async for row in cursor}
