"""Orca's grading queue on Broadway's single jobs: PUT a GradingJobConfig, get its result posted back.

An Orca job is a single job (broadway/single_jobs.py) of one stage: the built grader image
(`broadway-image:<sha>`, broadway/orca/images.py) running the config's grading script
(grader/orca_runner.py), with the response_url as its callback. So it shares the queue (its
collation is the user or team, its course the caller's), the claim, the reaper, cancellation
and the durable, signed, retried callbacks; the callback body is Orca's GradingJobResult.

Where a PUT puts the job, by its grader image's build:
- built: queued (after Orca's `priority` as a release delay, unless PUT to .../immediate);
- queued or building: held in the holding pen until the build ends (broadway/holding_pen.py);
- failed, or never requested: 400, as Orca answers for an unknown image.
The same key and response_url again, while that job is not yet running, updates it in place.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from broadway.callbacks.targets import CallbackTargetError, TargetPolicy, check_callback_url
from broadway.config import Config
from broadway.holding_pen import HoldingPen
from broadway.job_status import lifecycle_of
from broadway.models import Job, JobStatus
from broadway.orca.config import GradingJobConfig, OrcaConfigError, parse_grading_job
from broadway.orca.images import built_image_tag
from broadway.store import Store
from broadway.store.ids import new_id
from broadway.store.images import BuildStatus
from broadway.store.jobs import Ending
from broadway.store.orca_jobs import orca_ref
from broadway.store.single_jobs import NewSingleJob, OrcaFields

log = logging.getLogger(__name__)

HELD_MESSAGE = "This job is waiting for its grader image to build."
NOT_HELD_MESSAGE = "This job is not in a holding pen."


@dataclass(frozen=True)
class Placed:
    job: Job
    # False: an earlier PUT's job (same key and response_url, not yet running) was updated.
    created: bool


class OrcaQueue:
    def __init__(self, config: Config, store: Store, pen: HoldingPen) -> None:
        self.config = config
        self.store = store
        self.pen = pen
        self.callback_policy = TargetPolicy.from_strings(config.callback_allow_networks)

    async def put(self, body: Any, course: str, subject: str | None, immediate: bool) -> Placed:
        """Queue (or hold, or update) the job of a GradingJobConfig; OrcaConfigError lists what is wrong."""
        config = parse_grading_job(body)
        self._check_urls(config)
        sha = config.grader_image_sha
        build = await self.store.images.get(sha)
        if build is None:
            raise OrcaConfigError([f"$.grader_image_sha: no grader image {sha} has been built or is being built"])
        if build.status is BuildStatus.FAILED:
            raise OrcaConfigError([f"$.grader_image_sha: the build of grader image {sha} failed: {build.error}"])
        stage = {"image": built_image_tag(sha), "orca": config.orca_stage_fields()}
        ref = orca_ref(course, config.key, config.response_url)
        collation = f"{config.collation.type}:{config.collation.id}"
        change: dict[str, Any] = {"stages": [stage], "collation": collation}
        updated = await self.pen.jobs.update_waiting(ref, change, release_now=immediate)
        if updated is not None:
            log.info("orca job %s updated by its key", updated.id)
            return Placed(updated, created=False)
        held = build.status is not BuildStatus.SUCCEEDED
        delay = 0.0 if immediate else config.release_delay_s
        job = await self.store.single_jobs.insert(
            NewSingleJob(
                job_id=str(new_id()),
                course=course,
                subject=subject,
                stages=[stage],
                files=[],
                exercise=None,
                params={},
                assignment=None,
                work_id=None,
                callback_url=config.response_url,
                priority=0,
                collation=collation,
                orca=OrcaFields(
                    key=config.key,
                    ref=ref,
                    grader_image_sha=sha,
                    container_response_url=config.container_response_url,
                    held_for=sha if held else None,
                    release_at=time.time() + delay if delay > 0 else None,
                ),
            )
        )
        if held:
            await self._settle_if_built_meanwhile(sha)
        log.info("orca job %s %s", job.id, "held for its image" if held else "queued")
        return Placed(job, created=True)

    async def _settle_if_built_meanwhile(self, sha: str) -> None:
        """The build may have ended between reading its status and storing the held job, its
        end then finding nobody to release: look once more, and settle it as the end would have."""
        build = await self.store.images.get(sha)
        if build is not None and build.status in (BuildStatus.SUCCEEDED, BuildStatus.FAILED):
            await self.pen.build_finished(sha, build.status is BuildStatus.SUCCEEDED, build.error)

    def _check_urls(self, config: GradingJobConfig) -> None:
        errors = []
        urls = (("response_url", config.response_url), ("container_response_url", config.container_response_url))
        for name, url in urls:
            if url is None:
                continue
            try:
                check_callback_url(url, self.callback_policy)
            except CallbackTargetError as e:
                errors.append(f"$.{name}: {e}")
        if errors:
            raise OrcaConfigError(errors)


def orca_ending(job: Job, result: str, error: str | None, callback_max_age_s: float) -> Ending:
    """How an Orca job ends given its grader's report: its GradingJobResult (under `orca_result`
    in the reported result) is what the LMS receives; it succeeded when the script produced output."""
    response = orca_result_of(result)
    key = job.single.orca_key if job.single is not None else None
    response["key"] = key
    if error:
        response["errors"] = [*response.get("errors", []), error]
    succeeded = error is None and "output" in response
    reason = None if succeeded else (error or "; ".join(map(str, response.get("errors") or [])) or "the script failed")
    return Ending(
        JobStatus.SUCCEEDED if succeeded else JobStatus.FAILED,
        error=reason,
        callback_max_age_s=callback_max_age_s,
        orca_response=response,
    )


def orca_result_of(result: str | None) -> dict[str, Any]:
    try:
        parsed = json.loads(result) if result else {}
    except ValueError:
        parsed = {}
    found = parsed.get("orca_result") if isinstance(parsed, dict) else None
    if not isinstance(found, dict):
        return {"shell_responses": [], "errors": ["the grader reported no grading script result"]}
    return {
        **found,
        "shell_responses": found.get("shell_responses") if isinstance(found.get("shell_responses"), list) else [],
        "errors": found.get("errors") if isinstance(found.get("errors"), list) else [],
    }


def status_of(job: Job) -> dict[str, Any]:
    """GET /api/v1/grading_queue/{id}/status."""
    single = job.single
    held = job.status is JobStatus.CREATED and single is not None and single.held_for is not None
    body = lifecycle_of(job) | {
        "key": single.orca_key if single else None,
        "status": "held" if held else job.status.value,
        "grader_image_sha": single.grader_image_sha if single else None,
        "in_holding_pen": held,
    }
    if single is not None and single.release_at is not None and job.status is JobStatus.CREATED:
        body["status"] = "waiting"
        body["release_at"] = single.release_at
    return body


def holding_pen_status(job: Job) -> dict[str, Any]:
    """GET /api/v1/holding_pen/{id}/status: Orca's message, and what it is waiting for."""
    single = job.single
    held = job.status is JobStatus.CREATED and single is not None and single.held_for is not None
    body: dict[str, Any] = {"id": job.id, "in_holding_pen": held, "message": HELD_MESSAGE if held else NOT_HELD_MESSAGE}
    if held and single is not None:
        body["grader_image_sha"] = single.held_for
    return body
