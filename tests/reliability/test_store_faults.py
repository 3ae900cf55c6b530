"""The embedded store stops answering, then dies: the API says so (503, never 500, never a
hang), and recovers by itself once the store is back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from broadway.store import StoreUnavailable, is_store_failure
from tests.helpers import ApiClient, eventually, run_config
from tests.processes import ApiProcess


async def test_store_hung_then_killed_503_then_recovery(tmp_path: Path) -> None:
    api_proc = ApiProcess(tmp_path / "api", "--store-timeout", "1")
    await asyncio.to_thread(api_proc.start)
    try:
        api = ApiClient(api_proc.url)
        run_id = await api.submit(run_config(students=3))
        worker = await api.register()
        store_pid = int((api_proc.data_dir / "store.pid").read_text())

        os.kill(store_pid, signal.SIGSTOP)  # accepts connections, answers nothing
        for method, path, params in [
            ("GET", "/api/v1/health", None),
            ("GET", f"/api/v1/grading_run/{run_id}", None),
            ("POST", "/api/v1/heartbeat", {"worker_id": worker}),
        ]:
            started = time.monotonic()
            resp = await api.request(method, path, params=params, auth=True, timeout=30)
            elapsed = time.monotonic() - started
            assert resp.status == 503, (path, resp.status, resp.body)
            assert resp.json["error"], "a JSON body names the problem"
            assert elapsed < 10, f"{path} took {elapsed:.1f}s: a hung store must not hang requests"

        os.kill(store_pid, signal.SIGKILL)  # now it dies; the API restarts it on the same data
        health = await eventually(
            lambda: api.request("GET", "/api/v1/health"), lambda r: r.status == 200, timeout=30, interval=0.2
        )
        assert health.json["store"] == "ok"
        status = await api.status(run_id)
        assert len(status["student_statuses"]) == 3, "nothing stored before the fault was lost"
        assert (await api.heartbeat(worker)).status == 200
        log = api_proc.log()
        assert "restarting it" in log and "Traceback" not in log
    finally:
        await asyncio.to_thread(api_proc.stop)


def test_the_drivers_lock_error_while_the_store_is_down_counts_as_the_store_being_down() -> None:
    # PyMongo's async Condition on Python < 3.13 (PYTHON-5167) raised this from server selection
    # while the embedded store was stopped then killed: a 503 and a warning, not a 500 and a traceback.
    assert is_store_failure(RuntimeError("cannot wait on un-acquired lock"))
    assert is_store_failure(StoreUnavailable("no server"))
    assert not is_store_failure(RuntimeError("something else went wrong"))
