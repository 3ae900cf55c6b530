"""A report that asks for the next job (`next=1`) gets it in the same answer, as a poll would."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import urllib.parse
from typing import Any

from broadway.server import ApiService
from tests.conftest import MakeApi
from tests.helpers import ApiClient, Response, eventually, run_config, stage


async def report_next(
    api: ApiClient, worker: str, job: dict[str, Any], wait: float | None = 0, result: str = "ok"
) -> Response:
    params = {"worker_id": worker, "next": "1"}
    if wait is not None:
        params["wait"] = f"{wait:g}"
    body = {"result": result, "attempt": job["attempt"]}
    return await api.request("POST", f"/api/v1/grading_job/{job['job_id']}", params=params, json_body=body)


async def test_report_with_next_carries_the_next_job_and_records_the_result(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=3))
    worker = await api.register(slots=1)
    first = (await api.poll(worker)).json
    answer = await report_next(api, worker, first)
    assert answer.status == 200, answer.body
    second = answer.json["next"]
    assert answer.json["job_id"] == first["job_id"] and answer.json["duplicate"] is False
    # The same payload a poll answers.
    assert {"job_id", "stages", "attempt", "grading_run_id", "kind"} <= set(second)
    assert second["grading_run_id"] == run_id and second["job_id"] != first["job_id"]
    statuses = {s["job_id"]: s for s in (await api.status(run_id))["student_statuses"]}
    assert statuses[first["job_id"]]["status"] == "succeeded"
    assert statuses[second["job_id"]]["status"] == "running"
    # It really holds it: its own report is accepted, and the last one finds the queue empty.
    third = (await report_next(api, worker, second)).json["next"]
    last = await report_next(api, worker, third)
    assert last.status == 200 and last.json["next"] is None
    assert (await api.status(run_id))["status"] == "succeeded"


async def test_a_report_without_next_answers_as_before(api: ApiClient) -> None:
    await api.submit_and_start(run_config(students=2))
    worker = await api.register(slots=1)
    job = (await api.poll(worker)).json
    answer = await api.report(worker, job["job_id"], attempt=job["attempt"])
    assert answer.status == 200 and answer.json == {"job_id": job["job_id"], "duplicate": False}
    assert (await api.poll(worker)).status == 200, "the second job stayed in the queue"


async def test_report_with_next_on_an_empty_queue_waits_then_answers_null(api: ApiClient) -> None:
    await api.submit_and_start(run_config(students=1))
    worker = await api.register(slots=1)
    job = (await api.poll(worker)).json
    started = time.monotonic()
    answer = await report_next(api, worker, job, wait=0.5)
    assert answer.status == 200 and answer.json["next"] is None and answer.json["job_id"] == job["job_id"]
    assert 0.45 <= time.monotonic() - started < 3.0


async def test_report_with_next_is_woken_by_a_job_queued_during_its_wait(api: ApiClient) -> None:
    await api.submit_and_start(run_config(students=1))
    later = await api.submit(run_config(students=1))
    worker = await api.register(slots=1)
    job = (await api.poll(worker)).json
    waiting = asyncio.ensure_future(report_next(api, worker, job, wait=10))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "the report's answer waits for a next job"
    queued_at = time.monotonic()
    await api.start(later)
    answer = await waiting
    assert answer.status == 200 and answer.json["next"]["grading_run_id"] == later
    assert time.monotonic() - queued_at < 0.5


async def test_the_next_job_takes_the_reported_jobs_slot(api: ApiClient) -> None:
    await api.submit_and_start(run_config(students=3))
    worker = await api.register(slots=1)
    first = (await api.poll(worker)).json
    second = (await report_next(api, worker, first)).json["next"]
    # The next job holds the one slot: a poll beside it is refused, as with any held job.
    assert (await api.poll(worker)).status == 409
    # A 1-slot worker goes on reporting and getting the next job, never refused.
    third = (await report_next(api, worker, second)).json["next"]
    assert third is not None
    # The same report again (a retry) frees no slot: the result stands, no next job, and it says why.
    again = await report_next(api, worker, second)
    assert again.status == 200 and again.json["duplicate"] is True
    assert again.json["next"] is None and "slot" in again.json["next_refused"]


async def test_report_with_next_rejects_bad_arguments(api: ApiClient) -> None:
    await api.submit_and_start(run_config(students=1))
    worker = await api.register(slots=1)
    job = (await api.poll(worker)).json
    path = f"/api/v1/grading_job/{job['job_id']}"
    for params, named in (({"next": "maybe"}, "next"), ({"next": "1", "wait": "-1"}, "wait")):
        bad = await api.request("POST", path, params={"worker_id": worker, **params}, json_body={"result": "x"})
        assert bad.status == 400 and named in bad.json["error"]
    # Nothing was recorded by the refused requests.
    assert (await api.report(worker, job["job_id"], attempt=job["attempt"])).json["duplicate"] is False


async def report_next_then_hang_up(host: str, port: int, worker: str, job: dict[str, Any], hang_up_at: float) -> Any:
    """POST report+next (wait 10 s) and hang up (FIN) at loop time `hang_up_at`; the answer, if
    one came (only the sending half is closed, so a job written before the FIN is seen)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(host, port)
    query = urllib.parse.urlencode({"worker_id": worker, "next": 1, "wait": 10})
    body = json.dumps({"result": "ok", "attempt": job["attempt"]}).encode()
    head = (
        f"POST /api/v1/grading_job/{job['job_id']}?{query} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    await asyncio.sleep(max(0.0, hang_up_at - loop.time()))
    writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
    raw = await asyncio.wait_for(reader.read(), timeout=20)
    writer.close()
    if not raw:
        return None
    status_line, _, rest = raw.partition(b"\r\n\r\n")
    assert int(status_line.split()[1]) == 200, raw
    return json.loads(rest)


async def test_a_report_with_next_whose_client_hung_up_does_not_keep_the_job(make_api: MakeApi) -> None:
    service = await make_api(poll_recheck_interval=0.05)
    api = ApiClient(service.url)
    rng = random.Random(14)
    to_reporters = to_keepers = 0
    # Rounds until hang-ups have fallen on both sides of a hand-out. Where the hand-outs fall
    # depends on the machine's speed (a loaded CI machine starts the runs after every hang-up of
    # a 50 ms window), so each round spreads its hang-ups over twice the time of the one before;
    # every round checks that no job is lost or handed out twice.
    for round_number in range(7):
        reporters_got, keeper_got = await hang_up_round(api, service, rng, window=0.05 * 2**round_number)
        to_reporters += reporters_got
        to_keepers += keeper_got
        if to_reporters and to_keepers:
            break
    assert to_reporters and to_keepers, ("hang-ups on both sides of the hand-out", to_reporters, to_keepers)


async def hang_up_round(api: ApiClient, service: ApiService, rng: random.Random, window: float) -> tuple[int, int]:
    """20 reporters ask for their next job and hang up 1 ms to `window` s after 8 one-job runs
    start being started; how many of those jobs reached a reporter, and how many a keeper
    polling after."""
    loop = asyncio.get_running_loop()
    reporters = 20
    held_run = await api.submit_and_start(run_config(students=reporters))
    workers = [await api.register(slots=1) for _ in range(reporters)]
    held = [(await api.poll(w)).json for w in workers]
    runs = [await api.submit(run_config(students=1)) for _ in range(8)]
    start_at = loop.time() + 0.3
    delays = [0.001 + (window - 0.001) * i / (reporters - 1) for i in range(reporters)]
    rng.shuffle(delays)
    answers = [
        asyncio.ensure_future(report_next_then_hang_up(service.config.host, service.port, w, j, start_at + d))
        for w, j, d in zip(workers, held, delays, strict=True)
    ]

    async def start_runs() -> None:
        await asyncio.sleep(max(0.0, start_at - loop.time()))
        for run_id in runs:
            assert (await api.start(run_id)).status == 200

    await asyncio.gather(start_runs(), *answers)
    delivered: dict[str, str] = {}
    for worker, answer in zip(workers, (a.result() for a in answers), strict=True):
        if answer is not None and answer["next"] is not None:
            delivered[answer["next"]["job_id"]] = worker
            done = await api.report(worker, answer["next"]["job_id"], attempt=answer["next"]["attempt"])
            assert done.status == 200, done.body
    # Every report was recorded, whenever its client hung up.
    assert (await eventually(lambda: api.status(held_run), lambda s: s["status"] != "running"))["status"] == "succeeded"
    # Whatever no reporter received is back in the queue, not `running` under a client that is gone.
    keeper = await api.register(slots=1)
    for job in await api.work_off(keeper):
        assert job["job_id"] not in delivered, "a job handed out twice"
        delivered[job["job_id"]] = keeper
    for run_id in runs:
        (student,) = (await api.status(run_id))["student_statuses"]
        assert student["status"] == "succeeded" and student["attempts"] == 1, student
    assert len(delivered) == len(runs)
    to_reporters = sum(1 for w in delivered.values() if w != keeper)
    return to_reporters, len(runs) - to_reporters


async def test_a_worker_declared_dead_that_reports_with_next_is_revived_and_served(make_api: MakeApi) -> None:
    service = await make_api(worker_timeout=0.5)
    api = ApiClient(service.url)
    run_id = await api.submit_and_start(run_config(students=2))
    worker = await api.register(slots=1)
    job = (await api.poll(worker)).json
    # Silent past its timeout: declared dead, its job back in the queue.
    await eventually(lambda: api.status(run_id), lambda s: s["counts"]["queued"] == 2, timeout=10)
    answer = await report_next(api, worker, job)
    # The late result stands; the worker is alive again and gets the other job (not its own back).
    assert answer.status == 200 and answer.json["duplicate"] is False, answer.body
    other = answer.json["next"]
    assert other is not None and other["job_id"] != job["job_id"]
    assert (await api.heartbeat(worker)).status == 200
    assert (await api.report(worker, other["job_id"], attempt=other["attempt"])).status == 200
    assert (await eventually(lambda: api.status(run_id), lambda s: s["status"] != "running"))["status"] == "succeeded"


async def test_a_legacy_grader_asking_for_next_gets_a_lease_for_the_next_jobs_deadline(make_api: MakeApi) -> None:
    """A grader that registered without slots sends no heartbeat while it works: its next job's
    claim holds its lease for that job's deadline, as a poll's does."""
    service = await make_api(worker_timeout=0.5)
    api = ApiClient(service.url)
    short = await api.submit_and_start(run_config(students=1, student_pipeline=[stage(timeout=0.1)]))
    long = await api.submit_and_start(run_config(students=1, student_pipeline=[stage(timeout=5)]))
    worker = await api.register()  # no slots: a legacy grader
    first = (await api.poll(worker)).json
    assert first["grading_run_id"] == short
    second = (await report_next(api, worker, first)).json["next"]
    assert second["grading_run_id"] == long
    # Past the first job's deadline (0.6 s) and two worker timeouts: still its job, not requeued.
    await asyncio.sleep(1.5)
    (student,) = (await api.status(long))["student_statuses"]
    assert student["status"] == "running" and student["attempts"] == 1, student
    assert (await api.report(worker, second["job_id"], attempt=second["attempt"])).json["duplicate"] is False
