"""Statuses and the records the store hands out.

Code compares to the enums; the wire and the database carry their string values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    CREATED = "created"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class RunStatus(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(StrEnum):
    PRE = "preprocessing"
    STUDENT = "student"
    POST = "postprocessing"
    # One student's submission (POST /api/v1/job, /grade): no run, graded from its last stage.
    SINGLE = "single"


@dataclass(frozen=True)
class Run:
    id: str
    status: RunStatus
    n_students: int
    pre_job_id: str | None
    post_job_id: str | None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    callback_url: str | None = None
    # The course that owns it (its jobs are queued in that course's share).
    course: str = "default"
    # Its jobs carry per-status keys (broadway/store/run_status_keys.py): false for older runs.
    keyed_statuses: bool = False


@dataclass(frozen=True)
class Job:
    id: str
    # None for a single submission, which belongs to no run.
    run_id: str | None
    kind: JobKind
    seq: int
    status: JobStatus
    stages: list[dict[str, Any]]
    student: dict[str, str] | None = None
    attempts: int = 0
    attempt_id: str | None = None
    worker: str | None = None
    result: str | None = None
    error: str | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # Single submissions only.
    single: SingleFields | None = None
    # The course whose share it runs in ("default" for jobs from before courses).
    course: str = "default"


@dataclass(frozen=True)
class SingleFields:
    """What a single submission carries beyond a run's job."""

    course: str
    work_id: str | None = None
    assignment: str | None = None
    priority: int = 0
    callback_url: str | None = None
    # [{"name", "size", "file_id"}]: the submitted files, kept in GridFS.
    files: list[dict[str, Any]] = field(default_factory=list)
    # The name of the file the grader also puts at /tmp/exercise.
    exercise: str | None = None
    grade: float | None = None
    comments: list[str] = field(default_factory=list)
    created_at: float | None = None
    # Orca jobs only (PUT /api/v1/grading_queue): the LMS's key, the image, and why it waits, if it does.
    orca_key: str | None = None
    grader_image_sha: str | None = None
    held_for: str | None = None
    release_at: float | None = None


@dataclass(frozen=True)
class Worker:
    ref: str
    name: str
    slots: int
    alive: bool
    registered_at: float
    last_seen: float
    # A legacy grader (the 2018 one) speaks only the seed protocol: it has never named its jobs
    # in a heartbeat (nor its slots at registration), and sends no heartbeat while a job runs.
    legacy: bool = False
    # The reaper declares the worker dead once this time passes without news from it.
    lease_until: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
