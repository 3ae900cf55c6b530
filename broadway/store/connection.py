"""Connecting to MongoDB (real, or the embedded nx-27017) and creating the indexes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure

from broadway.metrics import StoreCommandMetrics
from broadway.store.assignments import AssignmentStore
from broadway.store.courses import CourseStore
from broadway.store.deliveries import DeliveryStore
from broadway.store.files import FileStore
from broadway.store.idempotency import IdempotencyStore
from broadway.store.images import ImageStore
from broadway.store.jobs import JobStore
from broadway.store.run_pages import RunPages
from broadway.store.runs import RunStore
from broadway.store.single_jobs import SingleJobStore
from broadway.store.workers import WorkerStore

# Raised by any store call when the database cannot be reached; the API answers 503.
StoreUnavailable = ConnectionFailure


def is_store_failure(exc: BaseException) -> bool:
    """Whether an exception means the store could not be reached (answer 503, retry later).

    Besides StoreUnavailable: PyMongo's async Condition on Python < 3.13 can raise RuntimeError
    "cannot wait on un-acquired lock" from server selection while the store is down (PYTHON-5167;
    seen here when the embedded store was stopped, then killed).
    """
    return isinstance(exc, StoreUnavailable) or (isinstance(exc, RuntimeError) and "un-acquired lock" in str(exc))


DEFAULT_DB = "broadway"


@dataclass
class Store:
    client: AsyncMongoClient
    db: AsyncDatabase
    runs: RunStore
    jobs: JobStore
    workers: WorkerStore
    assignments: AssignmentStore
    run_pages: RunPages
    # The callback outbox inside jobs and runs, and its attempt log.
    deliveries: DeliveryStore
    # Single submissions (kind "single" in `jobs`), their files in GridFS, their idempotency keys.
    single_jobs: SingleJobStore
    files: FileStore
    idempotency: IdempotencyStore
    # Grader image builds and their archives in GridFS (POST /api/v1/grader_images).
    images: ImageStore

    async def ensure_indexes(self) -> None:
        """Create the indexes the hot queries depend on (idempotent; run at start-up)."""
        # Only queued jobs carry queue_key, so the claim filters and sorts on this one field:
        # nx-27017's planner scans when filtering on one field and sorting on another.
        await self.db.jobs.create_index([("queue_key", ASCENDING)], sparse=True)
        await self.db.jobs.create_index([("run_id", ASCENDING)])
        # Starting a run queues its students chunk by chunk (see JobStore.queue_students).
        await self.db.jobs.create_index([("start_chunk", ASCENDING)], sparse=True)
        await self.db.jobs.create_index([("holder", ASCENDING)], sparse=True)
        await self.jobs.ensure_queue()
        await self.db.runs.create_index([("status", ASCENDING)])
        await self.db.workers.create_index([("last_seen", ASCENDING)])
        # The reaper finds expired leases on this one key; only live workers carry it.
        await self.db.workers.create_index([("lease_until", ASCENDING)], sparse=True)
        await self.db.assignments.create_index([("course", ASCENDING)])
        await self.deliveries.ensure_indexes()
        await CourseStore(self.db).ensure_indexes()
        # A job's files are found by their ids in the job document; this one is for cleaning up.
        await self.db.job_files.files.create_index([("metadata.owner", ASCENDING)])
        await self.images.ensure_indexes()

    async def ping(self, seconds: float) -> None:
        """Raise StoreUnavailable unless the database answers within that many seconds."""
        try:
            await asyncio.wait_for(self.client.admin.command("ping"), seconds)
        except TimeoutError:
            raise StoreUnavailable(f"the store did not answer a ping within {seconds:g}s") from None

    async def close(self) -> None:
        await self.client.close()


def connect(url: str, timeout_s: float = 5.0, operation_timeout_s: float = 10.0) -> Store:
    """A Store over the database named in the URL's path (default 'broadway').

    Server selection is bounded so that a request finds out the store is down in seconds
    (and answers 503) instead of hanging for the driver's default 30 s; every operation is
    bounded too (client-side operation timeout), so a store that accepts connections but no
    longer answers (hung, stopped) gives 503 as well. Operations whose size grows with a run
    lift that bound with `pymongo.timeout(BULK_TIMEOUT_S)` (see jobs.py).
    """
    ms = int(timeout_s * 1000)
    client: AsyncMongoClient = AsyncMongoClient(
        url,
        serverSelectionTimeoutMS=ms,
        connectTimeoutMS=ms,
        timeoutMS=int(operation_timeout_s * 1000),
        tz_aware=False,
        # Latency and failures of every store command, for GET /metrics.
        event_listeners=[StoreCommandMetrics()],
    )
    db = client.get_default_database(DEFAULT_DB)
    jobs = JobStore(db)
    return Store(
        client=client,
        db=db,
        runs=RunStore(db),
        jobs=jobs,
        workers=WorkerStore(db),
        assignments=AssignmentStore(db),
        run_pages=RunPages(db),
        deliveries=DeliveryStore(db),
        single_jobs=SingleJobStore(db, jobs.shares),
        files=FileStore(db),
        idempotency=IdempotencyStore(db),
        images=ImageStore(db),
    )
