"""Single submissions' lifecycle: submit (checks, files, the job), how a job ends, what it shows.

The rules, in order: a submission is checked whole before anything is stored (shape, assignment,
params, callback URL, ceilings), then its files go to GridFS and the job is stored queued. It
ends through the same report, reaper and cancel paths as a run's jobs; here it is decided how:
an infrastructure error fails it; else the last stage's response (broadway.grading) decides;
else exit codes do. A job with a callback_url gets its delivery recorded by the ending update.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from broadway.callbacks.targets import CallbackTargetError, TargetPolicy, check_callback_url
from broadway.config import Config
from broadway.grading import grade_of
from broadway.job_status import lifecycle_of
from broadway.models import Job, JobStatus
from broadway.orca_queue import orca_ending
from broadway.store import Store
from broadway.store.idempotency import IdempotencyConflict
from broadway.store.ids import new_id
from broadway.store.jobs import Ending
from broadway.store.single_jobs import NewSingleJob
from broadway.submissions import Submission, plan_stages
from broadway.validation import SubmissionError

log = logging.getLogger(__name__)


class SubmissionConflict(Exception):
    """An Idempotency-Key came back with a different body; the message says so."""


@dataclass(frozen=True)
class Submitted:
    job: Job
    # False when an earlier request with the same Idempotency-Key created it.
    created: bool


class SingleJobs:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.callback_policy = TargetPolicy.from_strings(config.callback_allow_networks)

    async def submit(
        self, submission: Submission, course: str, idempotency_key: str | None = None, subject: str | None = None
    ) -> Submitted:
        """Check a submission, store its files and its job (queued); raises SubmissionError
        (400) or SubmissionConflict (409). A repeated Idempotency-Key gives the first job.

        The job is owned by the course, and by `subject` too when a JWT subject submitted it.
        """
        assignment = None
        if submission.assignment is not None:
            assignment = await self.store.assignments.get(course, submission.assignment)
            if assignment is None:
                raise SubmissionError(f"$.assignment: no assignment named {submission.assignment!r}")
        self.check_callback(submission.callback_url)
        job_id = str(new_id())
        if idempotency_key is not None:
            try:
                # Keys are the owner's: two subjects' equal keys are two jobs, neither sees the other.
                scope = course if subject is None else f"{course}/subject:{subject}"
                reservation = await self.store.idempotency.reserve(
                    scope, idempotency_key, submission.fingerprint(), job_id
                )
            except IdempotencyConflict:
                raise SubmissionConflict(
                    f"Idempotency-Key {idempotency_key!r} was used in the last 24 hours with a different request"
                ) from None
            job_id = reservation.job_id
            if not reservation.fresh:
                existing = await self.store.single_jobs.get(job_id)
                if existing is not None:
                    return Submitted(existing[0], created=False)
                # The first request reserved the key and did not get to store its job: do it now.
        stages = plan_stages(submission, assignment, job_id, self.config.stage_ceilings)
        files = await self.store.files.put_all(job_id, submission.files)
        try:
            job = await self.store.single_jobs.insert(
                NewSingleJob(
                    job_id=job_id,
                    course=course,
                    subject=subject,
                    stages=stages,
                    files=files,
                    exercise=submission.exercise,
                    params=submission.params,
                    assignment=submission.assignment,
                    work_id=submission.work_id,
                    callback_url=submission.callback_url,
                    priority=submission.priority,
                    collation=submission.collation,
                )
            )
        except BaseException:
            await self.store.files.delete([f.file_id for f in files])
            raise
        log.info("single job %s submitted (%s, %d file(s))", job.id, submission.assignment or "inline", len(files))
        return Submitted(job, created=True)

    def check_callback(self, url: str | None) -> None:
        if url is None:
            return
        try:
            check_callback_url(url, self.callback_policy)
        except CallbackTargetError as e:
            raise SubmissionError(f"$.callback_url: {e}") from None


def ending_for(job: Job, success: bool, result: str, error: str | None, callback_max_age_s: float) -> Ending:
    """How a single job ends given its grader's report."""
    callback = callback_max_age_s if job.single is not None and job.single.callback_url else None
    if job.single is not None and job.single.orca_key is not None:
        return orca_ending(job, result, error, callback_max_age_s)
    if error:
        return Ending(JobStatus.FAILED, error=error, callback_max_age_s=callback)
    grade = grade_of(result, success)
    if grade is not None:
        status = JobStatus.SUCCEEDED if grade.success else JobStatus.FAILED
        return Ending(status, grade.grade, grade.comments, grade.error, callback_max_age_s=callback)
    if success:
        return Ending(JobStatus.SUCCEEDED, comments=[], callback_max_age_s=callback)
    return Ending(JobStatus.FAILED, error=failed_stage(result), callback_max_age_s=callback)


def failed_stage(result: str) -> str:
    """What failed, in a sentence for the LMS, from a grader's result."""
    for index, stage in enumerate(stages_of(result)):
        where = f"stage {index + 1} ({stage.get('image', '?')})"
        if stage.get("timed_out"):
            return f"{where} timed out"
        if stage.get("oom_killed"):
            return f"{where} ran out of memory"
        if stage.get("job_dir_full"):
            return f"{where} wrote more to /job than allowed"
        if stage.get("exit_code") not in (0, None):
            return f"{where} exited with code {stage['exit_code']}"
    return "the job failed"


def stages_of(result: str | None) -> list[dict[str, Any]]:
    try:
        parsed = json.loads(result) if result else {}
    except ValueError:
        return []
    stages = parsed.get("stages") if isinstance(parsed, dict) else None
    return [s for s in stages if isinstance(s, dict)] if isinstance(stages, list) else []


STAGE_FIELDS = ("image", "exit_code", "timed_out", "oom_killed", "duration_s", "output", "output_truncated")


def status_of(job: Job) -> dict[str, Any]:
    """GET /api/v1/job/{id}/status."""
    single = job.single
    body = lifecycle_of(job)
    if single is not None:
        body.update(work_id=single.work_id, assignment=single.assignment, priority=single.priority)
        body["files"] = [{"name": f["name"], "size": f["size"]} for f in single.files]
    return body


def output_of(job: Job) -> dict[str, Any]:
    """GET /api/v1/job/{id}/output, for a succeeded job: grade, comments, each stage's end."""
    single = job.single
    return {
        "id": job.id,
        "success": True,
        "work_id": single.work_id if single else None,
        "grade": single.grade if single else None,
        "comments": single.comments if single else [],
        "stages": [{k: stage.get(k) for k in STAGE_FIELDS} for stage in stages_of(job.result)],
    }
