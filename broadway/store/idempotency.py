"""Idempotency keys of single submissions (`Idempotency-Key` header), kept 24 hours.

A key is reserved with the job id it will name before the job is stored, so a retry that
arrives while the first request is still storing (or after it crashed part-way) finds the same
job id instead of creating a second job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

KEEP_S = 24 * 3600.0
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Reservation:
    job_id: str
    # True: this request reserved the key; False: an earlier request with the same body did.
    fresh: bool


class IdempotencyConflict(Exception):
    """The key was used within 24 hours with a different request body."""


class IdempotencyStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.keys = db.idempotency_keys

    async def reserve(self, scope: str, key: str, fingerprint: str, job_id: str) -> Reservation:
        """Reserve `key` for job_id, or return the job an earlier request with the same body got.

        Raises IdempotencyConflict when the key came with another body within 24 hours. An
        older entry has expired and is taken over (nx-27017 has no TTL indexes).
        """
        now = time.time()
        doc_id = f"{scope}:{key}"
        try:
            await self.keys.insert_one({"_id": doc_id, "fingerprint": fingerprint, "job_id": job_id, "at": now})
            return Reservation(job_id, fresh=True)
        except DuplicateKeyError:
            pass
        existing = await self.keys.find_one({"_id": doc_id})
        if existing is None:  # expired and removed meanwhile
            return await self.reserve(scope, key, fingerprint, job_id)
        if existing["at"] < now - KEEP_S:
            taken = await self.keys.find_one_and_update(
                {"_id": doc_id, "at": existing["at"]},
                {"$set": {"fingerprint": fingerprint, "job_id": job_id, "at": now}},
            )
            if taken is not None:
                return Reservation(job_id, fresh=True)
            return await self.reserve(scope, key, fingerprint, job_id)
        if existing["fingerprint"] != fingerprint:
            raise IdempotencyConflict(key)
        return Reservation(str(existing["job_id"]), fresh=False)
