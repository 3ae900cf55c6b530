"""The 2018 grader (illinois-cs241/broadway-grader), unchanged, against this API.

It registers with the token in the query string, polls without `wait` and retries at once on
412, runs a job with a blocking call (so no heartbeat while it holds one), reports a JSON body
without `success`, and never registers again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from broadway.liveness import DEFAULT_STAGE_TIMEOUT_S, job_deadline_s
from broadway.models import Job, JobKind, JobStatus
from tests.conftest import MakeApi
from tests.helpers import ApiClient, eventually, run_config, stage


@dataclass
class LegacyGrader:
    """Speaks exactly as the 2018 grader does; `job_seconds` is how long each job "runs"."""

    api: ApiClient
    job_seconds: float
    heartbeat_s: float = 10.0
    worker_id: str = ""
    requests: Counter[str] = field(default_factory=Counter)
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    reports: list[int] = field(default_factory=list)
    # Set to make it die with its job: it stops, never reports, never heartbeats again.
    die_mid_job: bool = False

    async def register(self) -> None:
        resp = await self.api.request("GET", "/api/v1/worker_register", params={"token": self.api.cluster_token})
        assert resp.status == 200, resp.body
        self.worker_id = resp.json["worker_id"]
        self.heartbeat_s = float(resp.json["heartbeat"])

    async def serve(self, seconds: float) -> None:
        """Its main loop: heartbeat when due, poll (no `wait`), run a job, report; for `seconds`."""
        stop_at = time.monotonic() + seconds
        last_beat = 0.0
        while time.monotonic() < stop_at:
            if time.monotonic() - last_beat >= self.heartbeat_s:
                await self._send("heartbeat", "POST", "/api/v1/heartbeat", params={"worker_id": self.worker_id})
                last_beat = time.monotonic()
            resp = await self._send(
                "poll", "GET", "/api/v1/grading_job", params={"worker_id": self.worker_id}, timeout=20
            )
            if resp.status != 200:
                continue  # 412: retry at once (and, as it did, at once on anything else too)
            job = resp.json
            self.jobs.append(job)
            await asyncio.sleep(self.job_seconds)  # the blocking run: no heartbeat meanwhile
            if self.die_mid_job:
                return
            await self.report(job)
            last_beat = 0.0

    async def report(self, job: dict[str, Any], result: str = "2018 result") -> int:
        resp = await self._send(
            "report",
            "POST",
            f"/api/v1/grading_job/{job['job_id']}",
            params={"worker_id": self.worker_id},
            json_body={"result": result},
        )
        self.reports.append(resp.status)
        return resp.status

    async def _send(self, what: str, method: str, path: str, **kwargs: Any) -> Any:
        self.requests[what] += 1
        resp = await self.api.request(method, path, **kwargs)
        self.answers[(what, resp.status)] += 1
        return resp


async def test_a_60s_job_with_default_flags_finishes_once_and_the_run_succeeds(make_api: MakeApi) -> None:
    # Default flags: heartbeat every 10 s, declared dead after 30 s without one, polls held 15 s.
    service = await make_api(heartbeat_interval=10, worker_timeout=None, poll_recheck_interval=0.5)
    assert service.config.effective_worker_timeout == 30 and service.config.poll_hold == 15
    api = ApiClient(service.url)
    grader = LegacyGrader(api, job_seconds=60.0)
    await grader.register()
    serving = asyncio.ensure_future(grader.serve(seconds=120))
    try:
        run_id = await api.submit_and_start(run_config(students=1, student_pipeline=[stage(timeout=90)]))
        status = await eventually(
            lambda: api.status(run_id), lambda s: s["status"] != "running", timeout=80, interval=1
        )
    finally:
        serving.cancel()
    (student,) = status["student_statuses"]
    assert status["status"] == "succeeded"
    assert student["status"] == "succeeded" and student["result"] == "2018 result"
    assert student["attempts"] == 1 and student["error"] is None, "never declared dead, never run again"
    assert len(grader.jobs) == 1 and grader.reports == [200]
    assert grader.answers[("heartbeat", 404)] == 0 and grader.answers[("poll", 404)] == 0
    # Held polls: a handful in ~60 s of running and a few idle seconds, not ~46 a second.
    assert grader.requests["poll"] < 10, grader.requests


async def test_a_legacy_grader_dying_mid_job_has_it_requeued_by_its_deadline(make_api: MakeApi) -> None:
    service = await make_api(worker_timeout=1.0, poll_hold=1.0)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1, student_pipeline=[stage(timeout=2)]))
    grader = LegacyGrader(api, job_seconds=0.0, die_mid_job=True)
    await grader.register()
    await grader.serve(seconds=5)  # claims the job, then dies holding it
    received_at = time.monotonic()
    # The job's deadline: its stage's 2 s plus one worker timeout, from the claim.
    status = await eventually(
        lambda: api.status(run_id), lambda s: s["counts"]["queued"] == 1, timeout=10, interval=0.02
    )
    requeued_after = time.monotonic() - received_at
    assert 2.9 <= requeued_after <= 3.0 + 0.5, f"requeued {requeued_after:.2f}s after the claim, deadline 3 s"
    (student,) = status["student_statuses"]
    assert "deadline" in student["error"] and student["attempts"] == 1


async def test_a_late_report_for_a_requeued_job_not_yet_claimed_again_is_accepted(make_api: MakeApi) -> None:
    service = await make_api(worker_timeout=0.5, poll_hold=1.0)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1, student_pipeline=[stage(timeout=1)]))
    grader = LegacyGrader(api, job_seconds=0.0, die_mid_job=True)
    await grader.register()
    await grader.serve(seconds=5)
    (job,) = grader.jobs
    await eventually(lambda: api.status(run_id), lambda s: s["counts"]["queued"] == 1, timeout=10)
    # It was only slow, not dead: the work is done, so it is recorded rather than run again.
    assert await grader.report(job, result="late but done") == 200
    status = await eventually(lambda: api.status(run_id), lambda s: s["status"] != "running", timeout=5)
    (student,) = status["student_statuses"]
    assert status["status"] == "succeeded" and student["status"] == "succeeded"
    assert student["result"] == "late but done" and student["attempts"] == 1 and student["error"] is None
    other = await api.register(slots=1)
    assert (await api.poll(other, wait=0)).status == 412, "the job left the queue"
    again = await api.request(
        "POST", f"/api/v1/grading_job/{job['job_id']}", params={"worker_id": grader.worker_id},
        json_body={"result": "late but done"},
    )  # fmt: skip
    assert again.status == 200 and again.json["duplicate"] is True


async def test_a_late_report_after_another_worker_claimed_the_job_is_409(make_api: MakeApi) -> None:
    service = await make_api(worker_timeout=0.5, poll_hold=1.0)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1, student_pipeline=[stage(timeout=1)]))
    grader = LegacyGrader(api, job_seconds=0.0, die_mid_job=True)
    await grader.register()
    await grader.serve(seconds=5)
    (job,) = grader.jobs
    await eventually(lambda: api.status(run_id), lambda s: s["counts"]["queued"] == 1, timeout=10)
    other = await api.register(slots=1)
    claimed = (await api.poll(other, wait=0)).json
    assert claimed["job_id"] == job["job_id"]
    assert await grader.report(job, result="too late") == 409
    assert (await api.report(other, claimed["job_id"], result="fresh", attempt=claimed["attempt"])).status == 200
    (student,) = (await api.status(run_id))["student_statuses"]
    assert student["result"] == "fresh" and student["attempts"] == 2


async def test_a_legacy_grader_declared_dead_does_not_spin_on_404(make_api: MakeApi) -> None:
    service = await make_api(heartbeat_interval=1, worker_timeout=2.5, poll_hold=1.0)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1, student_pipeline=[stage(timeout=0.5)]))
    grader = LegacyGrader(api, job_seconds=0.0, die_mid_job=True)
    await grader.register()
    await grader.serve(seconds=5)
    await eventually(lambda: api.status(run_id), lambda s: s["counts"]["queued"] == 1, timeout=10)
    other = await api.register(slots=1)
    assert len(await api.work_off(other)) == 1
    # Declared dead (its job went elsewhere); it comes back to its loop, as it would.
    grader.requests.clear()
    grader.answers.clear()
    grader.die_mid_job = False
    await grader.serve(seconds=3)
    assert sum(grader.requests.values()) <= 12, grader.requests
    assert {status for _, status in grader.answers} <= {200, 412}, grader.answers
    assert grader.answers[("heartbeat", 200)] >= 1, "revived, not forgotten"


def test_a_jobs_deadline_counts_every_stage_with_the_grader_default_where_none_is_named() -> None:
    stages = [{"image": "a", "timeout": 90}, {"image": "b"}, {"image": "c", "timeout": 2.5}]
    job = Job(id="j", run_id="r", kind=JobKind.STUDENT, seq=0, status=JobStatus.RUNNING, stages=stages)
    assert job_deadline_s(job, worker_timeout=30) == 90 + DEFAULT_STAGE_TIMEOUT_S + 2.5 + 30
