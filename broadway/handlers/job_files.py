"""Grader endpoint: a single job's submitted files, for the grader that holds the job."""

from __future__ import annotations

import urllib.parse

from broadway.handlers.base import SELF_AUTHENTICATED, ApiError, APIHandler
from broadway.models import JobStatus
from broadway.tokens import digest


class JobFileHandler(APIHandler):
    # A grader's endpoint: it checks its own credentials (cluster token, worker id), not a client's.
    access = SELF_AUTHENTICATED

    async def get(self, job_id: str, quoted_name: str) -> None:
        """The file's bytes, streamed chunk by chunk from GridFS (never whole in memory).

        Only the worker that runs the job may read it (404 for anyone else: the files are the
        student's work), named by its worker id as on every grader endpoint.
        """
        worker_ref = digest(self.required_str("worker_id"))
        name = urllib.parse.unquote(quoted_name)
        found = await self.services.store.single_jobs.get(job_id)
        job = found[0] if found else None
        if job is None or job.single is None or job.status is not JobStatus.RUNNING or job.worker != worker_ref:
            raise ApiError(404, f"no file {name!r} of a job this worker runs")
        entry = next((f for f in job.single.files if f["name"] == name), None)
        if entry is None:
            raise ApiError(404, f"job {job_id} has no file {name!r}")
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(entry["size"]))
        try:
            async for chunk in self.services.store.files.chunks(entry["file_id"]):
                self.write(chunk)
                await self.flush()
        except FileNotFoundError:
            raise ApiError(404, f"the file {name!r} of job {job_id} is gone from the store") from None
        await self.finish()


default_handlers = [(r"/api/v1/grading_job/([^/]+)/files/(.+)", JobFileHandler)]
