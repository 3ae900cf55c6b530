"""The part of a job's status every kind of single job answers with (single submissions, Orca's)."""

from __future__ import annotations

from typing import Any

from broadway.models import Job


def lifecycle_of(job: Job) -> dict[str, Any]:
    """What every single job's status says: where it is, since when, how many attempts, why it failed."""
    return {
        "id": job.id,
        "status": job.status.value,
        "attempts": job.attempts,
        "created_at": job.single.created_at if job.single else None,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "error": job.error,
    }
