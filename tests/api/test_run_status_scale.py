"""A run's status at scale: the summary, pages of students, and a whole big run that does not
hold up heartbeats while it is sent."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from broadway.server import ApiService
from tests.conftest import MakeApi
from tests.helpers import ApiClient, Response, eventually, run_config, stage

RUNS = "/api/v1/grading_run"


async def get_status(api: ApiClient, run_id: str, timeout: float = 40.0, **params: object) -> Response:
    return await api.request("GET", f"{RUNS}/{run_id}", params=params or None, auth=True, timeout=timeout)


async def submit_big(api: ApiClient, config: dict[str, object]) -> str:
    resp = await api.request("POST", RUNS, json_body={"json_payload": json.dumps(config)}, auth=True, timeout=300)
    assert resp.status == 200, resp.body
    return str(resp.json["id"])


async def finish_jobs(api: ApiClient, worker: str, n: int, success: bool = True) -> None:
    for _ in range(n):
        job = await api.poll(worker, wait=0)
        assert job.status == 200, job.body
        assert (await api.report(worker, job.json["job_id"], success=success)).status == 200


async def test_summary_gives_status_and_counts_without_the_job_list(api: ApiClient) -> None:
    config = run_config(students=4, postprocessing_pipeline=[stage(entrypoint=["true"])])
    run_id = await api.submit_and_start(config)
    worker = await api.register()
    await finish_jobs(api, worker, 1)
    await finish_jobs(api, worker, 1, success=False)
    held = await api.poll(worker, wait=0)
    assert held.status == 200

    resp = await get_status(api, run_id, summary=1)
    assert resp.status == 200, resp.body
    summary = resp.json
    assert "student_statuses" not in summary
    assert summary["id"] == run_id and summary["status"] == "running"
    assert summary["student_count"] == 4
    assert summary["counts"] == {
        "created": 0, "queued": 1, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 0
    }  # fmt: skip
    # The post-processing job is not a student: it is counted apart, and shown without its stages.
    assert summary["postprocessing_status"]["status"] == "created"
    assert "stages" not in summary["postprocessing_status"]
    # The same counts as the full status gives.
    assert (await api.status(run_id))["counts"] == summary["counts"]


async def test_pages_of_students_add_up_to_the_whole_run(api: ApiClient) -> None:
    config = run_config(students=7, preprocessing_pipeline=[stage(entrypoint=["true"])])
    run_id = await api.submit(config)
    whole = await api.status(run_id)
    pages = []
    for offset in (0, 3, 6):
        resp = await get_status(api, run_id, offset=offset, limit=3)
        assert resp.status == 200, resp.body
        pages.append(resp.json)
    assert [p["page"] for p in pages] == [
        {"offset": 0, "limit": 3, "returned": 3, "total": 7},
        {"offset": 3, "limit": 3, "returned": 3, "total": 7},
        {"offset": 6, "limit": 3, "returned": 1, "total": 7},
    ]
    paged = [s for page in pages for s in page["student_statuses"]]
    assert paged == whole["student_statuses"]
    assert [s["student"]["STUDENT_ID"] for s in paged] == [f"s{i}" for i in range(7)]
    assert all(p["preprocessing_status"]["job_id"] == whole["preprocessing_status"]["job_id"] for p in pages)
    assert all(p["counts"]["created"] == 7 for p in pages)

    beyond = (await get_status(api, run_id, offset=50, limit=3)).json
    assert beyond["student_statuses"] == [] and beyond["page"]["total"] == 7
    only_offset = (await get_status(api, run_id, offset=5)).json
    assert [s["student"]["STUDENT_ID"] for s in only_offset["student_statuses"]] == ["s5", "s6"]


async def test_pages_stay_right_when_the_store_returns_jobs_out_of_order(
    api: ApiClient, api_service: ApiService
) -> None:
    """Pages rely on the store handing a run's jobs back in submission order; when it does not
    (here a job rewritten at the end of the collection), the page is still the right students."""
    run_id = await api.submit(run_config(students=5))
    jobs = api_service.store.db.jobs
    moved = await jobs.find_one({"run_id": run_id, "seq": 1})
    assert moved is not None
    await jobs.delete_one({"_id": moved["_id"]})
    await jobs.insert_one(moved)
    page = (await get_status(api, run_id, offset=0, limit=3)).json
    assert [s["student"]["STUDENT_ID"] for s in page["student_statuses"]] == ["s0", "s1", "s2"]
    whole = await api.status(run_id)
    assert [s["student"]["STUDENT_ID"] for s in whole["student_statuses"]] == [f"s{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"offset": "-1"}, "offset must be a non-negative integer"),
        ({"offset": "abc", "limit": "2"}, "offset must be a non-negative integer"),
        ({"limit": "1.5"}, "limit must be a non-negative integer"),
        ({"limit": "1001"}, "limit must be at most 1000"),
        ({"limit": "9" * 5000}, "limit must be a non-negative integer"),
        ({"summary": "yes"}, "summary must be 1 or 0"),
        ({"summary": "1", "limit": "3"}, "summary=1 has no job list"),
    ],
)
async def test_bad_paging_arguments_are_400_naming_the_argument(
    api: ApiClient, params: dict[str, str], expected: str
) -> None:
    run_id = await api.submit(run_config(students=2))
    resp = await get_status(api, run_id, **params)
    assert resp.status == 400, resp.body
    assert expected in resp.json["error"]


async def test_a_whole_run_bigger_than_a_page_keeps_the_seed_shape(api: ApiClient) -> None:
    config = run_config(students=1203, postprocessing_pipeline=[stage(entrypoint=["true"])])
    run_id = await api.submit_and_start(config)
    worker = await api.register(slots=4)
    await finish_jobs(api, worker, 2)
    resp = await get_status(api, run_id, timeout=120)
    assert resp.status == 200
    status = json.loads(resp.body)
    students = status["student_statuses"]
    assert [s["student"]["STUDENT_ID"] for s in students] == [f"s{i}" for i in range(1203)]
    assert all(set(s) >= {"job_id", "stages", "status"} for s in students)
    assert len({s["job_id"] for s in students}) == 1203
    assert status["counts"]["succeeded"] == 2 and status["counts"]["queued"] == 1201
    assert status["student_count"] == 1203 and status["postprocessing_status"]["status"] == "created"


async def test_heartbeats_are_answered_while_a_big_run_status_is_sent(api: ApiClient, api_service: ApiService) -> None:
    """10,000 students, each job with 20 stages of 10 variables: ~3 million JSON values. Read,
    decoded and encoded in one piece on the event loop, it held every heartbeat up for seconds."""
    run_id = await submit_big(api, run_config(students=10_000))
    stages = [stage(entrypoint=["sh", "-c", f"step {n}"], env={f"VAR_{i}": f"value {i}" for i in range(10)})
              for n in range(20)]  # fmt: skip
    # Written straight to the store: submitting and grading such a run over HTTP takes minutes.
    # The API kept the submitted stages (they never change): it is told to read them again.
    await api_service.store.db.jobs.update_many({"run_id": run_id}, {"$set": {"status": "succeeded", "stages": stages}})
    api_service.services.scheduler.status_parts.forget(run_id)
    worker = await api.register()
    latencies: list[float] = []
    fetched = asyncio.create_task(get_status(api, run_id, timeout=300))

    async def beat() -> None:
        while not fetched.done():
            started = time.perf_counter()
            assert (await api.heartbeat(worker)).status == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)

    await asyncio.gather(beat(), fetched)
    resp = fetched.result()
    assert resp.status == 200
    status = json.loads(resp.body)
    assert len(status["student_statuses"]) == 10_000 and status["counts"]["succeeded"] == 10_000
    assert len(latencies) >= 5, "the fetch was over before heartbeats could be measured"
    assert max(latencies) < 1.0, f"slowest heartbeat during the fetch: {max(latencies):.2f}s"


async def test_a_client_that_hangs_up_mid_answer_leaves_the_api_serving(api: ApiClient) -> None:
    run_id = await api.submit(run_config(students=3000))
    with pytest.raises(ConnectionError):
        await get_status(api, run_id, timeout=0.05)
    worker = await api.register()
    assert (await api.heartbeat(worker)).status == 200
    summary = await eventually(lambda: get_status(api, run_id, summary=1), lambda r: r.status == 200)
    assert summary.json["counts"]["created"] == 3000


async def test_the_whole_status_is_the_same_from_the_submitting_process_and_another(make_api: MakeApi) -> None:
    """The submitting process answers from the fixed parts it kept at submission, another one
    reads them once and keeps them: all answer what the store holds, as jobs move on."""
    first, second = await make_api(), await make_api()
    submitter, other = ApiClient(first.url), ApiClient(second.url)
    run_id = await submitter.submit(run_config(students=7, env={"COURSE": "cs241"}))

    async def statuses() -> list[Any]:
        seen = [(await submitter.status(run_id))["student_statuses"] for _ in range(2)]
        seen += [(await other.status(run_id))["student_statuses"] for _ in range(2)]
        page = await submitter.request("GET", f"/api/v1/grading_run/{run_id}", params={"offset": 0}, auth=True)
        seen.append(page.json["student_statuses"])
        assert all(s == seen[0] for s in seen), seen
        return seen[0]

    created = await statuses()
    assert [s["status"] for s in created] == ["created"] * 7
    assert [s["student"] for s in created] == [{"STUDENT_ID": f"s{i}"} for i in range(7)]
    assert created[3]["stages"][0]["env"]["COURSE"] == "cs241"
    assert (await submitter.start(run_id)).status == 200
    worker = await submitter.register(slots=7)
    held = [(await submitter.poll(worker)).json for _ in range(3)]
    done = held[0]
    await submitter.report(worker, done["job_id"], result="graded", attempt=done["attempt"])
    moved = await statuses()
    by_id = {s["job_id"]: s for s in moved}
    assert by_id[done["job_id"]]["status"] == "succeeded" and by_id[done["job_id"]]["result"] == "graded"
    assert sum(s["status"] == "running" for s in moved) == 2
    assert sum(s["status"] == "queued" for s in moved) == 4
    assert all(s["stages"] == c["stages"] for s, c in zip(moved, created, strict=True))
