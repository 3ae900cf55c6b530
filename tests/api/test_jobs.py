"""Polling for jobs and reporting results: the queue, its ordering, and who may report what."""

from __future__ import annotations

import asyncio
import time

from broadway.server import ApiService
from tests.conftest import MakeApi
from tests.helpers import ApiClient, eventually, run_config, stage


async def test_empty_queue_is_412_immediately_with_wait_0(api: ApiClient) -> None:
    worker = await api.register()
    started = time.monotonic()
    resp = await api.poll(worker, wait=0)
    assert resp.status == 412 and resp.json["error"] == "The queue is empty"
    assert time.monotonic() - started < 1.0


async def test_poll_without_wait_is_held_for_poll_hold_then_412(make_api: MakeApi) -> None:
    """The 2018 grader polls without `wait` and retries at once on 412: holding its poll keeps it
    from hammering the API (~46 polls/s per idle grader when answered at once)."""
    api = ApiClient((await make_api(poll_hold=1.0)).url)
    worker = await api.register()
    started = time.monotonic()
    resp = await api.poll(worker, wait=None)
    assert resp.status == 412 and resp.json["error"] == "The queue is empty"
    assert 0.95 <= time.monotonic() - started < 3.0


async def test_held_poll_without_wait_gets_a_job_queued_during_the_hold_at_once(make_api: MakeApi) -> None:
    api = ApiClient((await make_api(poll_hold=10.0)).url)
    worker = await api.register()
    run_id = await api.submit(run_config(students=1))
    poll = asyncio.ensure_future(api.poll(worker, wait=None))
    await asyncio.sleep(0.3)
    assert not poll.done(), "an empty poll without `wait` is held"
    queued_at = time.monotonic()
    await api.start(run_id)
    resp = await poll
    assert resp.status == 200 and resp.json["grading_run_id"] == run_id
    assert time.monotonic() - queued_at < 0.5


async def test_poll_needs_a_live_registered_worker(api: ApiClient) -> None:
    assert (await api.request("GET", "/api/v1/grading_job")).status == 400
    unknown = await api.poll("a" * 64)
    assert unknown.status == 404 and "register" in unknown.json["error"]
    client_token_as_worker = await api.poll(api.client_token)
    assert client_token_as_worker.status == 404


async def test_job_payload_has_stages_and_attempt(api: ApiClient) -> None:
    config = run_config(students=1)
    config["student_pipeline"] = [
        stage(entrypoint=["sh", "-c", "echo hi"], host_name="grader", enable_networking=True, timeout=5, memory="64m")
    ]
    await api.submit_and_start(config)
    worker = await api.register()
    job = (await api.poll(worker)).json
    assert set(job) >= {"job_id", "stages", "attempt"}
    first = job["stages"][0]
    assert first["entrypoint"] == ["sh", "-c", "echo hi"] and first["host_name"] == "grader"
    assert first["enable_networking"] is True and first["timeout"] == 5 and first["memory"] == "64m"
    assert "students" not in job


async def test_long_poll_answers_as_soon_as_a_job_is_queued(api: ApiClient) -> None:
    worker = await api.register()
    run_id = await api.submit(run_config(students=1))
    poll = asyncio.ensure_future(api.poll(worker, wait=10))
    await asyncio.sleep(0.3)
    assert not poll.done()
    queued_at = time.monotonic()
    await api.start(run_id)
    resp = await poll
    assert resp.status == 200
    assert time.monotonic() - queued_at < 0.5


async def test_long_poll_times_out_with_412_and_wait_is_validated(api: ApiClient) -> None:
    worker = await api.register()
    started = time.monotonic()
    resp = await api.poll(worker, wait=0.3)
    assert resp.status == 412
    assert 0.25 < time.monotonic() - started < 2
    for bad in ("soon", "-1", "nan"):
        assert (await api.poll(worker, wait=bad)).status == 400  # type: ignore[arg-type]


async def test_hung_up_long_poller_is_not_handed_the_job(api: ApiClient, api_service: ApiService) -> None:
    quitter, keeper = await api.register(), await api.register()
    run_id = await api.submit(run_config(students=1))
    # The first poller gives up (client timeout) long before its wait ends.
    try:
        await api.request("GET", "/api/v1/grading_job", params={"worker_id": quitter, "wait": 20}, timeout=0.3)
    except ConnectionError:
        pass
    await asyncio.sleep(0.2)
    await api.start(run_id)
    resp = await api.poll(keeper, wait=5)
    assert resp.status == 200, "the job must go to the poller that is still listening"
    status = await api.status(run_id)
    assert status["student_statuses"][0]["attempts"] == 1


async def test_report_success_and_failure_finish_the_run(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=2))
    worker = await api.register()
    first = (await api.poll(worker)).json
    ok = await api.report(worker, first["job_id"], result="all good", success=True)
    assert ok.status == 200
    second = (await api.poll(worker)).json
    bad = await api.report(worker, second["job_id"], result="test 3 failed", success=False)
    assert bad.status == 200
    status = await api.status(run_id)
    by_id = {s["job_id"]: s for s in status["student_statuses"]}
    assert by_id[first["job_id"]]["status"] == "succeeded" and by_id[first["job_id"]]["result"] == "all good"
    assert by_id[second["job_id"]]["status"] == "failed" and by_id[second["job_id"]]["result"] == "test 3 failed"
    assert status["status"] == "succeeded", "a failing student job does not fail the run"
    assert status["finished_at"] is not None


async def test_report_without_success_means_completed_and_accepts_form_and_query(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=2))
    worker = await api.register()
    a = (await api.poll(worker)).json
    resp = await api.request("POST", f"/api/v1/grading_job/{a['job_id']}", form={"worker_id": worker, "result": "x"})
    assert resp.status == 200
    b = (await api.poll(worker)).json
    resp = await api.request(
        "POST", f"/api/v1/grading_job/{b['job_id']}", params={"worker_id": worker, "result": "y", "success": "false"}
    )
    assert resp.status == 200
    statuses = {s["job_id"]: s["status"] for s in (await api.status(run_id))["student_statuses"]}
    assert statuses == {a["job_id"]: "succeeded", b["job_id"]: "failed"}


async def test_report_naming_an_infrastructure_error_fails_the_job_and_keeps_the_reason(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=1))
    worker = await api.register()
    job = (await api.poll(worker)).json
    resp = await api.report(worker, job["job_id"], result="{}", success=True, error="infrastructure: image gone")
    assert resp.status == 200
    (student,) = (await api.status(run_id))["student_statuses"]
    assert student["status"] == "failed", "an infrastructure error is never a success"
    assert student["error"] == "infrastructure: image gone"
    bad = await api.report(worker, job["job_id"], error=["not", "text"])
    assert bad.status == 400 and "error" in bad.json["error"]


async def test_same_report_twice_is_one_result(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=1))
    worker = await api.register()
    job = (await api.poll(worker)).json
    first = await api.report(worker, job["job_id"], result="r", attempt=job["attempt"])
    again = await api.report(worker, job["job_id"], result="r", attempt=job["attempt"])
    assert first.status == again.status == 200
    assert again.json["duplicate"] is True
    different = await api.report(worker, job["job_id"], result="changed", attempt=job["attempt"])
    assert different.status == 409
    status = await api.status(run_id)
    assert status["student_statuses"][0]["result"] == "r"
    assert status["status"] == "succeeded"


async def test_only_the_holding_worker_and_attempt_may_report(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=1))
    holder, other = await api.register(), await api.register()
    job = (await api.poll(holder)).json
    assert (await api.report(other, job["job_id"], result="stolen")).status == 409
    forged = await api.report("0" * 64, job["job_id"], result="forged")
    assert forged.status == 404 and "unknown worker" in forged.json["error"], "an unknown worker learns nothing"
    assert (await api.report(holder, job["job_id"], result="old", attempt="not-the-attempt")).status == 409
    status = await api.status(run_id)
    assert status["student_statuses"][0]["status"] == "running"
    assert (await api.report(holder, job["job_id"], result="real", attempt=job["attempt"])).status == 200


async def test_report_argument_errors(api: ApiClient) -> None:
    await api.submit_and_start(run_config(students=1))
    worker = await api.register()
    job = (await api.poll(worker)).json
    path = f"/api/v1/grading_job/{job['job_id']}"
    assert (await api.request("POST", path, json_body={"result": "x"})).status == 400
    assert (await api.request("POST", path, json_body={"worker_id": worker})).status == 400
    bad_success = await api.request("POST", path, json_body={"worker_id": worker, "result": "x", "success": "maybe"})
    assert bad_success.status == 400
    unknown = await api.report(worker, "0" * 24)
    assert unknown.status == 404
    assert (await api.report(worker, "not-an-id")).status == 404


async def test_oversized_result_is_stored_truncated(make_api, api_service: ApiService) -> None:  # type: ignore[no-untyped-def]
    small = await make_api(max_result_bytes=1000)
    api = ApiClient(small.url)
    run_id = await api.submit_and_start(run_config(students=1))
    worker = await api.register()
    job = (await api.poll(worker)).json
    assert (await api.report(worker, job["job_id"], result="x" * 5000)).status == 200
    stored = (await api.status(run_id))["student_statuses"][0]["result"]
    assert len(stored.encode()) <= 1000 and "truncated" in stored


async def test_a_worker_holds_one_job_per_slot(api: ApiClient) -> None:
    await api.submit_and_start(run_config(students=5))
    single = await api.register()
    assert (await api.poll(single)).status == 200
    busy = await api.poll(single)
    assert busy.status == 409 and "slot" in busy.json["error"]
    double = await api.register(slots=2)
    assert (await api.poll(double)).status == 200
    assert (await api.poll(double)).status == 200
    assert (await api.poll(double)).status == 409


async def test_pre_then_students_then_post_with_roster(api: ApiClient) -> None:
    config = run_config(
        students=3,
        preprocessing_pipeline=[stage(entrypoint=["pre"])],
        postprocessing_pipeline=[stage(entrypoint=["post"])],
    )
    run_id = await api.submit_and_start(config)
    worker = await api.register(slots=4)
    pre = (await api.poll(worker)).json
    assert pre["stages"][0]["entrypoint"] == ["pre"] and pre["kind"] == "preprocessing"
    # `students` is the run's list exactly as submitted: the 2018 grader writes it verbatim to
    # /job/roster.json, and existing post-processing images read it.
    assert pre["students"] == config["students"]
    assert [s["env"]["STUDENT_ID"] for s in pre["student_results"]] == ["s0", "s1", "s2"]
    assert (await api.poll(worker)).status == 412, "students wait for pre-processing"
    await api.report(worker, pre["job_id"], result="prepared")
    students = [(await api.poll(worker)).json for _ in range(3)]
    assert all(j["stages"][0]["entrypoint"] == ["true"] for j in students)
    for job in students[:2]:
        await api.report(worker, job["job_id"], result=f"score {job['job_id']}")
    assert (await api.poll(worker)).status == 412, "post-processing waits for every student job"
    await api.report(worker, students[2]["job_id"], result="crashed", success=False)
    post = (await api.poll(worker)).json
    assert post["kind"] == "postprocessing"
    assert post["students"] == [{"STUDENT_ID": "s0"}, {"STUDENT_ID": "s1"}, {"STUDENT_ID": "s2"}]
    roster = {s["job_id"]: s for s in post["student_results"]}
    assert {r["status"] for r in roster.values()} == {"succeeded", "failed"}
    assert roster[students[0]["job_id"]]["result"] == f"score {students[0]['job_id']}"
    status = await api.status(run_id)
    assert status["preprocessing_status"]["status"] == "succeeded"
    assert status["postprocessing_status"]["status"] == "running"
    await api.report(worker, post["job_id"], result="summary")
    status = await api.status(run_id)
    assert status["status"] == "succeeded"
    assert status["postprocessing_status"]["result"] == "summary"


async def test_failing_preprocessing_fails_run_and_cancels_students(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=2, preprocessing_pipeline=[stage()]))
    worker = await api.register()
    pre = (await api.poll(worker)).json
    await api.report(worker, pre["job_id"], result="broken", success=False)
    status = await api.status(run_id)
    assert status["status"] == "failed" and "pre-processing" in status["error"]
    assert {s["status"] for s in status["student_statuses"]} == {"cancelled"}
    assert (await api.poll(worker)).status == 412


async def test_failing_postprocessing_fails_run(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=1, postprocessing_pipeline=[stage()]))
    worker = await api.register()
    await api.work_off(worker)
    status = await api.status(run_id)
    assert status["status"] == "succeeded"
    run_id = await api.submit_and_start(run_config(students=1, postprocessing_pipeline=[stage()]))
    student = (await api.poll(worker)).json
    await api.report(worker, student["job_id"])
    post = (await api.poll(worker)).json
    await api.report(worker, post["job_id"], result="oops", success=False)
    status = await api.status(run_id)
    assert status["status"] == "failed" and "post-processing" in status["error"]


async def test_zero_students_still_runs_postprocessing_and_finishes(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=0, postprocessing_pipeline=[stage()]))
    worker = await api.register()
    post = (await api.poll(worker)).json
    assert post["students"] == [] and post["student_results"] == []
    await api.report(worker, post["job_id"])
    assert (await api.status(run_id))["status"] == "succeeded"
    plain = await api.submit_and_start(run_config(students=0))
    await eventually(lambda: api.status(plain), lambda s: s["status"] == "succeeded")


async def test_pipeline_jobs_jump_the_queue(api: ApiClient) -> None:
    await api.submit_and_start(run_config(students=5))
    run_b = await api.submit_and_start(run_config(students=1, preprocessing_pipeline=[stage(entrypoint=["pre"])]))
    worker = await api.register()
    first = (await api.poll(worker)).json
    assert first["grading_run_id"] == run_b and first["kind"] == "preprocessing"
