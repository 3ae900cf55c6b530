"""Token buckets in the `rate_limits` collection, one document per course, so that every API
process over one store takes from the same bucket.

A take reads the bucket, computes the refill, and writes it back only if nobody wrote in
between (a version number in the filter of find_one_and_update); on a lost race it reads again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from broadway.courses import Rate

# Lost races in a row before giving up (each is another process's successful take).
MAX_RACES = 50


@dataclass(frozen=True)
class Take:
    allowed: bool
    # When refused: seconds until a token is there.
    retry_after_s: float = 0.0


class RateLimitStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.buckets = db.rate_limits

    async def take(self, course: str, rate: Rate, now: float | None = None) -> Take:
        """Take one token from the course's bucket, or say how long until one is there."""
        for _ in range(MAX_RACES):
            at = time.time() if now is None else now
            doc = await self.buckets.find_one({"_id": course})
            if doc is None:
                try:
                    await self.buckets.insert_one({"_id": course, "tokens": float(rate.burst - 1), "at": at, "v": 0})
                    return Take(True)
                except DuplicateKeyError:
                    continue  # another process created it first: take from theirs
            elapsed = max(0.0, at - float(doc["at"]))
            tokens = min(float(rate.burst), float(doc["tokens"]) + elapsed * rate.per_second)
            if tokens < 1.0:
                return Take(False, retry_after_s=(1.0 - tokens) / rate.per_second)
            won = await self.buckets.find_one_and_update(
                {"_id": course, "v": doc["v"]},
                {"$set": {"tokens": tokens - 1.0, "at": max(at, float(doc["at"]))}, "$inc": {"v": 1}},
            )
            if won is not None:
                return Take(True)
        # Contended beyond reason: refuse this one rather than spin.
        return Take(False, retry_after_s=1.0 / rate.per_second)

    async def forget(self, course: str) -> None:
        """Drop a course's bucket (its rate changed or it was deleted): it starts full again."""
        await self.buckets.delete_one({"_id": course})
