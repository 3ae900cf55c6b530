"""Client endpoints for single submissions (seed 002's /api/v1/job) and correctomatic's /grade."""

from __future__ import annotations

import dataclasses

from broadway import submissions
from broadway.courses import Scope
from broadway.handlers.base import ApiError, APIHandler, needs_scope
from broadway.handlers.queue_room import admit_queued
from broadway.models import Job, JobStatus
from broadway.single_jobs import SingleJobs, SubmissionConflict, output_of, status_of
from broadway.store.idempotency import MAX_KEY_LENGTH
from broadway.store.single_jobs import Change
from broadway.submissions import Submission
from broadway.validation import SubmissionError

# base64 makes files 4/3 larger, and a form or JSON wraps them.
_ENCODING_ROOM = 1.4


class SubmissionHandler(APIHandler):
    """What every way of submitting shares: the body limit, the parsing, the submit."""

    def body_limit(self) -> int:
        config = self.services.config
        return max(config.max_body_bytes, int(config.max_files_bytes * _ENCODING_ROOM) + (1 << 20))

    def submission_from_request(self) -> Submission:
        max_files = self.services.config.max_files_bytes
        try:
            if self.request.files or not self._looks_like_json():
                return submissions.from_form(self.request.body_arguments, self.request.files, max_files)
            return submissions.from_json(self.json_body, max_files)
        except SubmissionError as e:
            raise ApiError(400, f"invalid submission: {e}") from None

    async def submit(self, submission: Submission) -> tuple[Job, bool]:
        key = self.request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
            raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
        await self.admit_submission()
        await admit_queued(self, self.caller.course, 1)
        lifecycle = SingleJobs(self.services.config, self.services.store)
        owner = self.caller.owner
        try:
            submitted = await lifecycle.submit(submission, owner.course, key, owner.subject)
        except SubmissionError as e:
            raise ApiError(400, f"invalid submission: {e}") from None
        except SubmissionConflict as e:
            raise ApiError(409, str(e)) from None
        if submitted.created:
            self.services.jobs_signal.notify()
        return submitted.job, submitted.created


class JobsHandler(SubmissionHandler):
    @needs_scope(Scope.JOBS)
    async def post(self) -> None:
        """Submit one student's work: 201 {"id", "status", "work_id"}; the same Idempotency-Key
        again gives the first job (200)."""
        job, created = await self.submit(self.submission_from_request())
        self.set_header("Location", f"/api/v1/job/{job.id}")
        if not created:
            self.set_header("Idempotent-Replayed", "true")
        body = {"id": job.id, "status": job.status.value, "work_id": job.single.work_id if job.single else None}
        self.write_json(body, status=201 if created else 200)


class GradeHandler(SubmissionHandler):
    @needs_scope(Scope.JOBS)
    async def post(self) -> None:
        """correctomatic's POST /grade (multipart: work_id, assignment_id, callback, file, param...)."""
        job, _ = await self.submit(self.submission_from_request())
        self.write_json({"success": True, "message": f"job {job.id} queued", "job_id": job.id})


class OneJobHandler(SubmissionHandler):
    """Base of the handlers of one single job, found by the id in the path."""

    async def single_job(self, job_id: str) -> tuple[Job, dict[str, str]]:
        """The job, if the caller may see it; 404 otherwise (whether or not it exists)."""
        found = await self.services.store.single_jobs.get_owned(job_id)
        self.owned(found[2] if found else None, f"no job with id {job_id[:40]!r}")
        assert found is not None
        return found[0], found[1]


class JobHandler(OneJobHandler):
    @needs_scope(Scope.JOBS)
    async def get(self, job_id: str) -> None:
        """The job's status and, once it succeeded, its output (else `output` is null)."""
        job, _ = await self.single_job(job_id)
        body = status_of(job)
        body["output"] = output_of(job) if job.status is JobStatus.SUCCEEDED else None
        body["delivery"] = await self.services.store.deliveries.delivery_state("job", job.id)
        self.write_json(body)

    @needs_scope(Scope.JOBS)
    async def patch(self, job_id: str) -> None:
        """Change files, params, priority or callback while the job is queued; 409 once it runs."""
        job, _ = await self.single_job(job_id)
        change = await self._change(job)
        changed = await self.services.store.single_jobs.change_queued(job.id, change)
        if changed is None:
            if change.files is not None:
                await self.services.store.files.delete([f.file_id for f in change.files])
            current, _ = await self.single_job(job_id)
            raise ApiError(409, f"job {job_id} is {current.status.value}: it can only be changed while queued")
        if job.single is not None and change.files is not None:
            await self.services.store.files.delete([f["file_id"] for f in job.single.files])
        if change.priority is not None:
            self.services.jobs_signal.notify()
        self.write_json(status_of(changed))

    async def _change(self, job: Job) -> Change:
        body = self.json_body
        if not isinstance(body, dict) or not body:
            raise ApiError(400, "the request body must be a JSON object with files, params, priority or callback_url")
        unknown = sorted(set(body) - {"files", "params", "priority", "callback_url"})
        if unknown:
            raise ApiError(400, f"invalid change: {', '.join(unknown)} cannot be changed (files, params, priority, "
                                "callback_url can)")  # fmt: skip
        single = job.single
        assert single is not None
        # The changed fields are checked as a new submission's would be (the recipe is the job's own).
        changed = {k: body[k] for k in ("files", "params", "priority", "callback_url") if k in body}
        try:
            merged = submissions.from_json({"image": "unchanged", **changed}, self.services.config.max_files_bytes)
            SingleJobs(self.services.config, self.services.store).check_callback(merged.callback_url)
            stages = None
            if "params" in body:
                if single.assignment is None:
                    raise SubmissionError("$.params: an inline pipeline's params cannot change; submit it again")
                assignment = await self.services.store.assignments.get(single.course, single.assignment)
                if assignment is None:
                    raise SubmissionError(f"$.params: assignment {single.assignment!r} no longer exists")
                resubmitted = dataclasses.replace(merged, assignment=single.assignment, pipeline=None)
                stages = submissions.plan_stages(resubmitted, assignment, job.id, self.services.config.stage_ceilings)
        except SubmissionError as e:
            raise ApiError(400, f"invalid change: {e}") from None
        files = await self.services.store.files.put_all(job.id, merged.files) if "files" in body else None
        return Change(
            stages=stages,
            files=files,
            exercise=None,
            params=merged.params if "params" in body else None,
            priority=merged.priority if "priority" in body else None,
            callback_url=(merged.callback_url or "") if "callback_url" in body else None,
        )

    @needs_scope(Scope.JOBS)
    async def delete(self, job_id: str) -> None:
        """Cancel: a queued job at once, a running one's grader kills it within a heartbeat."""
        job, _ = await self.single_job(job_id)
        cancelled = await self.services.store.single_jobs.cancel(job.id, self.services.config.callback_max_age_s)
        if cancelled is None:
            current, _ = await self.single_job(job_id)
            raise ApiError(409, f"job {job_id} has already ended ({current.status.value})")
        await self.services.scheduler.job_finished(cancelled)
        self.write_json(status_of(cancelled))


class JobStatusHandler(OneJobHandler):
    @needs_scope(Scope.JOBS)
    async def get(self, job_id: str) -> None:
        job, _ = await self.single_job(job_id)
        self.write_json(status_of(job))


class JobOutputHandler(OneJobHandler):
    @needs_scope(Scope.JOBS)
    async def get(self, job_id: str) -> None:
        """The result once succeeded; 404 for failed/cancelled (it will never exist); 409 before."""
        job, _ = await self.single_job(job_id)
        if job.status is JobStatus.SUCCEEDED:
            self.write_json(output_of(job))
        elif job.status.terminal:
            reason = f": {job.error}" if job.error else ""
            raise ApiError(404, f"job {job_id} {job.status.value}{reason}; its output will never exist")
        else:
            self.set_status(409)
            self.finish({"error": f"job {job_id} is {job.status.value}: no output yet", "status": 409,
                         "job_status": job.status.value})  # fmt: skip


class JobDeliveriesHandler(OneJobHandler):
    @needs_scope(Scope.JOBS)
    async def get(self, job_id: str) -> None:
        """Every attempt to deliver the job's callback: time, status code or error."""
        job, _ = await self.single_job(job_id)
        attempts = await self.services.store.deliveries.attempts_for(job.id)
        state = await self.services.store.deliveries.delivery_state("job", job.id)
        self.write_json({"id": job.id, "delivery": state, "attempts": [a.to_json() for a in attempts]})


default_handlers = [
    (r"/api/v1/job/?", JobsHandler),
    (r"/grade/?", GradeHandler),
    (r"/api/v1/job/([^/]+)/status/?", JobStatusHandler),
    (r"/api/v1/job/([^/]+)/output/?", JobOutputHandler),
    (r"/api/v1/job/([^/]+)/deliveries/?", JobDeliveriesHandler),
    (r"/api/v1/job/([^/]+)/?", JobHandler),
]
