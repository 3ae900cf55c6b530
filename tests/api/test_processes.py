"""The API as real processes: restarts keep everything, two processes share one store safely."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from broadway.embedded_store import EmbeddedStore
from tests.helpers import ApiClient, run_config
from tests.processes import ApiProcess


@pytest.fixture
def processes() -> Iterator[list[ApiProcess]]:
    started: list[ApiProcess] = []
    yield started
    for proc in started:
        proc.stop()


async def test_restart_on_same_data_dir_keeps_runs_and_queued_jobs(tmp_path: Path, processes: list[ApiProcess]) -> None:
    first = ApiProcess(tmp_path / "data")
    processes.append(first)
    await asyncio.to_thread(first.start)
    api = ApiClient(first.url)
    run_id = await api.submit_and_start(run_config(students=3))
    worker = await api.register()
    done = (await api.poll(worker)).json
    await api.report(worker, done["job_id"], result="before restart")
    before = await api.status(run_id)

    await asyncio.to_thread(first.kill)  # no clean shutdown
    second = ApiProcess(tmp_path / "data", port=first.port)
    processes.append(second)
    await asyncio.to_thread(second.start)

    after = await api.status(run_id)
    assert after["student_statuses"] == before["student_statuses"]
    assert (await api.heartbeat(worker)).status == 200, "registered workers survive an API restart"
    handed = await api.work_off(worker)
    assert len(handed) == 2 and done["job_id"] not in {j["job_id"] for j in handed}
    final = await api.status(run_id)
    assert final["status"] == "succeeded"
    assert Counter(s["status"] for s in final["student_statuses"]) == {"succeeded": 3}
    assert "Traceback" not in second.log()


async def test_sigterm_stops_the_api_and_its_embedded_store(tmp_path: Path) -> None:
    proc = ApiProcess(tmp_path / "data")
    await asyncio.to_thread(proc.start)
    pid_file = tmp_path / "data" / "store.pid"
    store_pid = int(pid_file.read_text())
    assert await asyncio.to_thread(proc.stop) == 0
    assert (
        not Path(f"/proc/{store_pid}").exists() or b"zombie" in Path(f"/proc/{store_pid}/status").read_bytes().lower()
    )


async def test_two_api_processes_on_one_store_never_hand_a_job_out_twice(
    tmp_path: Path, store_server: EmbeddedStore, processes: list[ApiProcess]
) -> None:
    url = f"mongodb://127.0.0.1:{store_server.port}/shared_{tmp_path.name[-12:]}"
    a = ApiProcess(tmp_path / "a", "--mongo-url", url)
    b = ApiProcess(tmp_path / "b", "--mongo-url", url)
    processes.extend([a, b])
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    api_a, api_b = ApiClient(a.url), ApiClient(b.url)
    run_id = await api_a.submit(run_config(students=200))
    handed: list[str] = []

    async def grader(api: ApiClient) -> None:
        worker = await api.register()
        while True:
            resp = await api.poll(worker, wait=1)
            if resp.status == 412:
                return
            assert resp.status == 200, resp.body
            handed.append(resp.json["job_id"])
            assert (await api.report(worker, resp.json["job_id"], result="ok")).status == 200

    pollers = [asyncio.ensure_future(grader(api_a if i % 2 else api_b)) for i in range(16)]
    await asyncio.sleep(0.2)  # every poller is waiting before the jobs appear
    assert (await api_b.start(run_id)).status == 200
    await asyncio.gather(*pollers)
    assert len(handed) == 200
    assert len(set(handed)) == 200, "a job was handed out twice"
    status = await api_a.status(run_id)
    assert status["status"] == "succeeded" and status["counts"]["succeeded"] == 200
