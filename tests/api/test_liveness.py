"""The reaper: silent workers are declared dead and their jobs requeued or failed."""

from __future__ import annotations

import time

from tests.conftest import MakeApi
from tests.helpers import ApiClient, eventually, run_config


async def test_dead_worker_job_is_requeued_within_1_1x_timeout(make_api: MakeApi) -> None:
    service = await make_api(worker_timeout=1.0)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1))
    silent = await api.register()
    job = (await api.poll(silent)).json
    claimed_at = time.monotonic()
    status = await eventually(
        lambda: api.status(run_id), lambda s: s["student_statuses"][0]["status"] == "queued", timeout=5, interval=0.02
    )
    elapsed = time.monotonic() - claimed_at
    assert elapsed <= 1.1 * 1.0 + 0.15, f"requeued after {elapsed:.2f}s"
    entry = status["student_statuses"][0]
    assert entry["attempts"] == 1 and "missed heartbeats" in entry["error"]
    # The dead worker is forgotten: heartbeat and poll say register again; its late report is refused.
    assert (await api.heartbeat(silent)).status == 404
    assert (await api.poll(silent)).status == 404
    assert (await api.report(silent, job["job_id"], result="late")).status == 409
    survivor = await api.register()
    again = (await api.poll(survivor)).json
    assert again["job_id"] == job["job_id"] and again["attempt"] != job["attempt"]
    assert (await api.report(survivor, again["job_id"], result="fresh")).status == 200
    final = await api.status(run_id)
    assert final["student_statuses"][0]["result"] == "fresh" and final["student_statuses"][0]["attempts"] == 2


async def test_heartbeats_keep_a_worker_alive(make_api: MakeApi) -> None:
    service = await make_api(worker_timeout=0.6)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=1))
    worker = await api.register()
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
        worker = await api.register()
        job = await eventually(lambda w=worker: api.poll(w), lambda r: r.status == 200, timeout=5)  # type: ignore[misc]
        assert job.json["attempt"]
        expected = "queued" if attempt == 1 else "failed"
        await eventually(
            lambda: api.status(run_id), lambda s, e=expected: s["student_statuses"][0]["status"] == e, timeout=5
        )
    status = await api.status(run_id)
    entry = status["student_statuses"][0]
    assert entry["attempts"] == 2 and entry["error"].startswith("infrastructure:")
    assert status["status"] == "succeeded", "the run completes; the job's failure is recorded on the job"
