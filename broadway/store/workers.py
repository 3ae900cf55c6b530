"""Graders in the `workers` collection, keyed by the digest of their id (the id itself is a secret).

A live worker carries `lease_until`, the time by which it must be heard from again; the reaper
finds expired leases on that one sparsely indexed key (declaring a worker dead removes it, so
the dead, however many, are never scanned again). A heartbeat extends the lease by the worker
timeout; a legacy grader, which sends no heartbeat while a job runs, gets a lease covering the
whole job when it claims one.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from broadway.models import Worker
from broadway.store.jobs import count


def _worker(doc: dict[str, Any]) -> Worker:
    return Worker(
        ref=doc["_id"],
        name=doc.get("name", ""),
        slots=doc.get("slots", 1),
        alive=doc["alive"],
        registered_at=doc["registered_at"],
        last_seen=doc["last_seen"],
        legacy=doc.get("legacy", False),
        lease_until=doc.get("lease_until"),
        # A grader started with --build also builds grader images (handlers/grader_images.py).
        extra={"build": True} if doc.get("build") else {},
    )


class WorkerStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.workers = db.workers

    async def register(
        self, ref: str, name: str, slots: int, lease_s: float, legacy: bool, build: bool = False
    ) -> Worker:
        """Record a new live worker under ref (the digest of its id), leased for lease_s seconds;
        `build`: it also claims grader image builds."""
        now = time.time()
        doc: dict[str, Any] = {
            "_id": ref, "name": name, "slots": slots, "alive": True, "legacy": legacy,
            "registered_at": now, "last_seen": now, "lease_until": now + lease_s,
        }  # fmt: skip
        if build:
            doc["build"] = True
        await self.workers.insert_one(doc)
        return _worker(doc)

    async def get(self, ref: str) -> Worker | None:
        """The worker, alive or declared dead; None if it never registered."""
        doc = await self.workers.find_one({"_id": ref})
        return _worker(doc) if doc else None

    async def get_alive(self, ref: str) -> Worker | None:
        """The worker if it is registered and not declared dead."""
        doc = await self.workers.find_one({"_id": ref, "alive": True})
        return _worker(doc) if doc else None

    async def heartbeat(self, ref: str, lease_s: float, names_jobs: bool) -> Worker | None:
        """Extend a live worker's lease to lease_s from now and return it; None if it is unknown
        or was declared dead.

        A lease longer than that (a legacy grader's, covering its job) is kept, unless the
        heartbeat names the worker's jobs: that grader heartbeats while it works, so it is no
        longer treated as legacy, and one timeout is its lease from now on.
        """
        now = time.time()
        update: dict[str, Any]
        if names_jobs:
            update = {"$set": {"last_seen": now, "lease_until": now + lease_s, "legacy": False}}
        else:
            update = {"$set": {"last_seen": now}, "$max": {"lease_until": now + lease_s}}
        doc = await self.workers.find_one_and_update(
            {"_id": ref, "alive": True}, update, return_document=ReturnDocument.AFTER
        )
        return _worker(doc) if doc else None

    async def revive(self, ref: str, lease_s: float) -> Worker | None:
        """A worker declared dead is heard from again: alive, leased lease_s from now. None if it
        was not dead (unknown, or revived meanwhile by another request)."""
        now = time.time()
        doc = await self.workers.find_one_and_update(
            {"_id": ref, "alive": False},
            {"$set": {"alive": True, "last_seen": now, "lease_until": now + lease_s, "revived_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        return _worker(doc) if doc else None

    async def hold_lease_until(self, ref: str, until: float) -> None:
        """Keep a worker alive at least until `until` (a legacy grader that has just claimed a job
        and will not heartbeat until it reports). It is alive: it has just polled."""
        await self.workers.update_one({"_id": ref}, {"$max": {"lease_until": until}, "$set": {"alive": True}})

    async def stale(self, now: float) -> list[Worker]:
        """Live workers whose lease has run out."""
        cursor = self.workers.find({"lease_until": {"$lt": now}})
        return [_worker(doc) async for doc in cursor if doc.get("alive")]

    async def mark_dead(self, ref: str, now: float) -> bool:
        """Declare a worker dead, unless its lease was extended past `now` meanwhile."""
        result = await self.workers.update_one(
            {"_id": ref, "lease_until": {"$lt": now}},
            {"$set": {"alive": False, "died_at": time.time()}, "$unset": {"lease_until": ""}},
        )
        return result.modified_count == 1

    async def lease_unleased(self, lease_s: float) -> int:
        """Give live workers recorded before leases existed a lease of lease_s from now (once, at
        start-up): without one the reaper would never look at them."""
        result = await self.workers.update_many(
            {"alive": True, "lease_until": {"$exists": False}}, {"$set": {"lease_until": time.time() + lease_s}}
        )
        return result.modified_count

    async def count_alive(self) -> int:
        return await count(self.workers, {"alive": True})
