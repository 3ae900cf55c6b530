"""Graders in the `workers` collection, keyed by the digest of their id (the id itself is a secret)."""

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
    )


class WorkerStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.workers = db.workers

    async def register(self, ref: str, name: str, slots: int) -> Worker:
        """Record a new live worker under ref (the digest of its id)."""
        now = time.time()
        doc = {"_id": ref, "name": name, "slots": slots, "alive": True, "registered_at": now, "last_seen": now}
        await self.workers.insert_one(doc)
        return _worker(doc)

    async def get_alive(self, ref: str) -> Worker | None:
        """The worker if it is registered and not declared dead."""
        doc = await self.workers.find_one({"_id": ref, "alive": True})
        return _worker(doc) if doc else None

    async def heartbeat(self, ref: str) -> Worker | None:
        """Extend a live worker's lease and return it; None if it is unknown or was declared dead."""
        doc = await self.workers.find_one_and_update(
            {"_id": ref, "alive": True}, {"$set": {"last_seen": time.time()}}, return_document=ReturnDocument.AFTER
        )
        return _worker(doc) if doc else None

    async def stale(self, cutoff: float) -> list[Worker]:
        """Live workers not heard from since cutoff."""
        cursor = self.workers.find({"last_seen": {"$lt": cutoff}, "alive": True})
        return [_worker(doc) async for doc in cursor]

    async def mark_dead(self, ref: str, cutoff: float) -> bool:
        """Declare a worker dead, unless it heartbeated after cutoff meanwhile."""
        result = await self.workers.update_one(
            {"_id": ref, "alive": True, "last_seen": {"$lt": cutoff}},
            {"$set": {"alive": False, "died_at": time.time()}},
        )
        return result.modified_count == 1

    async def count_alive(self) -> int:
        return await count(self.workers, {"alive": True})
