"""A long poll whose client hangs up is never handed a job, whenever the hang-up happens."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import urllib.parse
from dataclasses import dataclass

from tests.conftest import MakeApi
from tests.helpers import ApiClient, eventually, run_config


@dataclass
class Hangup:
    worker: str
    status: int | None  # the answer's status, if one came
    job: dict[str, object] | None


async def poll_then_hang_up(host: str, port: int, worker: str, hang_up_at: float) -> Hangup:
    """Long-poll, and hang up (send FIN) at loop time `hang_up_at`.

    Only the sending half is closed: the API sees the same FIN as from a client that went away,
    and anything it still sends is read here, so a job written before it could know is seen as
    delivered, not lost. Exact where a full close would race with the answer in flight.
    """
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(host, port)
    query = urllib.parse.urlencode({"worker_id": worker, "wait": 10})
    writer.write(f"GET /api/v1/grading_job?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(max(0.0, hang_up_at - loop.time()))
    sock = writer.get_extra_info("socket")
    sock.shutdown(socket.SHUT_WR)
    raw = await asyncio.wait_for(reader.read(), timeout=20)
    writer.close()
    if not raw:
        return Hangup(worker, None, None)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return Hangup(worker, status, json.loads(body) if status == 200 else None)


async def test_pollers_hanging_up_at_many_moments_never_keep_a_job(make_api: MakeApi) -> None:
    service = await make_api(poll_recheck_interval=0.05)
    api = ApiClient(service.url)
    host, port = service.config.host, service.port
    rng = random.Random(9)
    delivered: dict[str, str] = {}  # job id -> worker that received it
    all_jobs: set[str] = set()
    keepers: set[str] = set()
    pollers_per_round, jobs_per_round = 40, 15
    loop = asyncio.get_running_loop()
    for round_number in range(4):
        runs = [await api.submit(run_config(students=1)) for _ in range(jobs_per_round)]
        workers = [await api.register(slots=1) for _ in range(pollers_per_round)]
        # Hang-ups spread from 1 ms to 150 ms after the jobs start being queued: in the first
        # round at once, with the polls still being read; then once the polls are held. (Where
        # the hand-outs fall depends on the machine: 50 ms was too short a window under load.)
        start_at = loop.time() + (0.0 if round_number == 0 else 0.3)
        delays = [0.001 + 0.149 * i / (pollers_per_round - 1) for i in range(pollers_per_round)]
        rng.shuffle(delays)
        pollers = [
            asyncio.ensure_future(poll_then_hang_up(host, port, w, start_at + d))
            for w, d in zip(workers, delays, strict=True)
        ]

        async def start_runs(runs: list[str] = runs, start_at: float = start_at) -> None:
            await asyncio.sleep(max(0.0, start_at - loop.time()))
            for run_id in runs:
                assert (await api.start(run_id)).status == 200

        await asyncio.gather(start_runs(), *pollers)
        for hangup in (p.result() for p in pollers):
            if hangup.job is not None:
                job_id = str(hangup.job["job_id"])
                assert job_id not in delivered, "a job handed out twice"
                delivered[job_id] = hangup.worker
                # It really holds it: its report is accepted.
                report = await api.report(hangup.worker, job_id, result="by a poller", attempt=hangup.job["attempt"])
                assert report.status == 200, report.body
            else:
                assert hangup.status in (None, 412), hangup
        for run_id in runs:
            all_jobs.add((await api.status(run_id))["student_statuses"][0]["job_id"])
        # Whatever no poller received is back in the queue (never `running` under a gone
        # poller), and goes, once, to a poller that listens.
        keeper = await api.register(slots=1)
        keepers.add(keeper)
        for job in await api.work_off(keeper):
            assert job["job_id"] not in delivered, "a job handed out twice"
            delivered[str(job["job_id"])] = keeper
        for run_id in runs:
            status = await eventually(lambda r=run_id: api.status(r), lambda s: s["status"] != "running", timeout=5)  # type: ignore[misc]
            (student,) = status["student_statuses"]
            assert status["status"] == "succeeded" and student["status"] == "succeeded", student
            assert student["attempts"] == 1, "a claim given back is not an attempt"
    assert set(delivered) == all_jobs
    # The hang-ups did fall on both sides of the hand-out.
    to_pollers = sum(1 for worker in delivered.values() if worker not in keepers)
    assert 0 < to_pollers < len(all_jobs), to_pollers


async def test_a_poller_gone_before_its_request_was_read_is_not_handed_a_job(make_api: MakeApi) -> None:
    """The request and the FIN arrive together: Tornado may never call on_connection_close then."""
    service = await make_api()
    api = ApiClient(service.url)
    runs = [await api.submit_and_start(run_config(students=1)) for _ in range(10)]
    for _ in range(10):
        worker = await api.register(slots=1)
        query = urllib.parse.urlencode({"worker_id": worker, "wait": 0})
        reader, writer = await asyncio.open_connection(service.config.host, service.port)
        writer.write(f"GET /api/v1/grading_job?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        assert not answer.startswith(b"HTTP/1.1 200"), "a job handed to a poller that had hung up"
    # Every job is still in the queue, not `running` under a poller that is gone.
    keeper = await api.register(slots=1)
    assert len(await api.work_off(keeper)) == 10
    for run_id in runs:
        (student,) = (await api.status(run_id))["student_statuses"]
        assert student["status"] == "succeeded" and student["attempts"] == 1
