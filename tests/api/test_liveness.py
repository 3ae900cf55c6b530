"""The reaper: silent workers are declared dead and their jobs requeued or failed."""

from __future__ import annotations

import time

from tests.conftest import MakeApi
from tests.helpers import ApiClient, eventually, run_config

ZERO = {"created": 0, "queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}


async def test_dead_worker_job_is_requeued_within_1_1x_timeout(make_api: MakeApi) -> None:
    service = await make_api(worker_timeout=1.0)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1))
    # Naming its slots, it is a grader of ours, which heartbeats while it works (not legacy).
    silent = await api.register(slots=1)
    job = (await api.poll(silent)).json
    claimed_at = time.monotonic()
    status = await eventually(
        lambda: api.status(run_id), lambda s: s["student_statuses"][0]["status"] == "queued", timeout=5, interval=0.02
    )
    elapsed = time.monotonic() - claimed_at
    assert elapsed <= 1.1 * 1.0 + 0.15, f"requeued after {elapsed:.2f}s"
    entry = status["student_statuses"][0]
    assert entry["attempts"] == 1 and "missed heartbeats" in entry["error"]
    survivor = await api.register(slots=1)
    again = (await api.poll(survivor)).json
    assert again["job_id"] == job["job_id"] and again["attempt"] != job["attempt"]
    # Once another worker has claimed the job, the dead worker's late report is refused.
    assert (await api.report(silent, job["job_id"], result="late", attempt=job["attempt"])).status == 409
    assert (await api.report(silent, job["job_id"], result="late")).status == 409
    assert (await api.report(survivor, again["job_id"], result="fresh")).status == 200
    final = await api.status(run_id)
    assert final["student_statuses"][0]["result"] == "fresh" and final["student_statuses"][0]["attempts"] == 2


async def test_a_dead_worker_heard_from_again_is_revived_holding_no_job(make_api: MakeApi) -> None:
    service = await make_api(worker_timeout=0.5)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1))
    worker = await api.register(slots=1)
    job = (await api.poll(worker)).json
    await eventually(lambda: api.status(run_id), lambda s: s["counts"]["queued"] == 1, timeout=5)
    health = await eventually(lambda: api.request("GET", "/api/v1/health"), lambda r: r.json["workers_alive"] == 0)
    assert health.status == 200
    # Not 404 (the 2018 grader never registers again, and would heartbeat on 404 in a loop).
    assert (await api.heartbeat(worker)).status == 200
    assert (await api.request("GET", "/api/v1/health")).json["workers_alive"] == 1
    assert (await api.status(run_id))["counts"] == {**ZERO, "queued": 1}, "it came back holding no job"
    again = (await api.poll(worker)).json
    assert again["job_id"] == job["job_id"] and again["attempt"] != job["attempt"]
    assert (await api.report(worker, again["job_id"], result="done", attempt=again["attempt"])).status == 200
    # A poll revives as well.
    await eventually(lambda: api.request("GET", "/api/v1/health"), lambda r: r.json["workers_alive"] == 0)
    assert (await api.poll(worker)).status == 412
    assert (await api.request("GET", "/api/v1/health")).json["workers_alive"] == 1
    assert (await api.heartbeat("f" * 64)).status == 404, "a worker that never registered is still unknown"


async def test_heartbeats_keep_a_worker_alive(make_api: MakeApi) -> None:
    service = await make_api(worker_timeout=0.6)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1))
    worker = await api.register(slots=1)
    job = (await api.poll(worker)).json
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert (await api.heartbeat(worker)).status == 200
        status = await api.status(run_id)
        assert status["student_statuses"][0]["status"] == "running"
    assert (await api.report(worker, job["job_id"])).status == 200


async def test_job_fails_with_infrastructure_reason_after_max_attempts(make_api: MakeApi) -> None:
    service = await make_api(worker_timeout=0.4, max_attempts=2)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1))
    for attempt in (1, 2):
        worker = await api.register(slots=1)
        job = await eventually(lambda w=worker: api.poll(w), lambda r: r.status == 200, timeout=5)  # type: ignore[misc]
        assert job.json["attempt"]
        expected = "queued" if attempt == 1 else "failed"
        await eventually(
            lambda: api.status(run_id), lambda s, e=expected: s["student_statuses"][0]["status"] == e, timeout=5
        )
    # The job fails first; the run finishes right after, in the reaper's next step.
    status = await eventually(lambda: api.status(run_id), lambda s: s["status"] != "running", timeout=5)
    entry = status["student_statuses"][0]
    assert entry["attempts"] == 2 and entry["error"].startswith("infrastructure:")
    assert status["status"] == "succeeded", "the run completes; the job's failure is recorded on the job"


async def test_a_claim_that_never_reached_a_live_worker_is_taken_back(api: ApiClient) -> None:
    """A poll's answer lost on the way (API killed after the claim, connection dropped): the
    grader's heartbeat lists the jobs it runs, and a job it holds but does not list goes back."""
    run_id = await api.submit_and_start(run_config(students=2))
    worker = await api.register(slots=2)
    kept = (await api.poll(worker)).json
    lost = (await api.poll(worker)).json
    running = {"worker_id": worker, "jobs": kept["job_id"]}
    # Within the grace period (2 heartbeats) a claim may still be on its way: nothing changes.
    assert (await api.request("POST", "/api/v1/heartbeat", params=running)).status == 200
    assert (await api.status(run_id))["counts"]["running"] == 2

    async def beat() -> dict[str, object]:
        assert (await api.request("POST", "/api/v1/heartbeat", params=running)).status == 200
        return await api.status(run_id)

    status = await eventually(beat, lambda s: s["counts"]["queued"] == 1, timeout=5, interval=0.2)
    by_id = {s["job_id"]: s for s in status["student_statuses"]}
    assert by_id[kept["job_id"]]["status"] == "running", "a job the worker lists is left alone"
    assert "never received" in by_id[lost["job_id"]]["error"]
    assert (await api.report(worker, lost["job_id"], result="late", attempt=lost["attempt"])).status == 409
    bad = await api.request("POST", "/api/v1/heartbeat", json_body={"worker_id": worker, "jobs": [1, 2]})
    assert bad.status == 400 and "jobs" in bad.json["error"]
