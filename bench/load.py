"""Load figures for a sysadmin: big runs, claim cost as the queue grows, memory, requeue speed.

One API child process on its embedded store (a fresh temporary data dir), driven over HTTP:
  submit/start/status  a 10,000-student run: seconds to submit, to start (queue every job),
                       and to GET its whole status (target < 0.3 s); heartbeat latency while it
                       is submitted and started. At the end, the baseline: its whole status from
                       a restarted API (first read: whole documents; second: kept parts).
  summary              GET ?summary=1 of that run, median of 20 (target < 20 ms).
  claim growth         median poll->job latency with ~1,000 jobs queued, then with ~100,000
                       queued; their ratio (target <= 1.5: the claim must not scan the queue).
  big status           the whole status of a 100,000-student run, and heartbeat latency (p50,
                       p99, max) while it is sent (target: max < 100 ms).
  rss                  the API process's resident memory with 100,000+ jobs stored.
  cancel               cancelling that run: seconds, and heartbeat latency meanwhile.
  requeue              a worker claims a job and falls silent: seconds from its last heartbeat
                       to the job being queued again, as a ratio of --worker-timeout (target <= 1.1).

Every step is timed and caught: a step that fails (a timeout on a slow day) is reported with
its error, the figures that depend on it print as nan, and the bench goes on to the end.
Whole statuses are read as start_run reads them (urllib, in a thread, no gzip), so the bench's
own event loop keeps timing heartbeats meanwhile.

Last line: submit_s=<f> start_s=<f> status_s=<f> claim_growth_ratio=<f> requeue_ratio=<f> rss_mb=<f>
           summary_ms=<f> big_status_s=<f> big_status_heartbeat_max_ms=<f>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable
from importlib import metadata
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import CLIENT_TOKEN, ApiClient, run_config
from tests.processes import ApiProcess

WORKER_TIMEOUT = 2.0
# Run-sized requests (a 100,000-student submission takes a minute or more on 2 cores).
LONG_TIMEOUT = 1800.0
NAN = float("nan")
T = TypeVar("T")


def machine() -> str:
    """What the figures were measured on: CPU, cores, Python, store."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        store = f"embedded nx-27017 {metadata.version('nx-27017')}"
    except metadata.PackageNotFoundError:
        store = "embedded nx-27017"
    return (f"{cpu}, {os.cpu_count()} cores (load {os.getloadavg()[0]:.1f}), {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, store: {store} (SQLite, temp dir)")  # fmt: skip


FAILED_STEPS: list[str] = []


async def step(name: str, work: Awaitable[T]) -> T | None:
    """Run one step of the bench; on failure say which and why, and go on."""
    try:
        return await work
    except Exception as exc:  # a bench reports every failure and carries on
        print(f"  STEP FAILED: {name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        FAILED_STEPS.append(name)
        return None


def percentiles(latencies: list[float]) -> str:
    if not latencies:
        return "n=0"
    ordered = sorted(latencies)
    p99 = ordered[int(0.99 * (len(ordered) - 1))]
    return (f"n={len(ordered)} p50={statistics.median(ordered) * 1000:.1f} ms p99={p99 * 1000:.1f} ms "
            f"max={ordered[-1] * 1000:.1f} ms")  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def timed(work: Awaitable[T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = await work
    return time.perf_counter() - started, result


async def submit(api: ApiClient, students: int) -> str:
    """Submit a run with the long timeout (ApiClient.submit's 40 s is too short at 100k)."""
    body = {"json_payload": json.dumps(run_config(students=students))}
    resp = await api.request("POST", "/api/v1/grading_run", json_body=body, auth=True, timeout=LONG_TIMEOUT)
    if resp.status != 200:
        raise RuntimeError(f"submission answered {resp.status}: {resp.body[:200]!r}")
    return str(resp.json["id"])


async def start(api: ApiClient, run_id: str) -> None:
    resp = await api.request("POST", f"/api/v1/grading_run/{run_id}", auth=True, timeout=LONG_TIMEOUT)
    if resp.status != 200:
        raise RuntimeError(f"start answered {resp.status}: {resp.body[:200]!r}")


async def cancel(api: ApiClient, run_id: str) -> None:
    resp = await api.request("POST", f"/api/v1/grading_run/{run_id}/cancel", auth=True, timeout=LONG_TIMEOUT)
    if resp.status != 200:
        raise RuntimeError(f"cancel answered {resp.status}: {resp.body[:200]!r}")


def read_whole_status(url: str) -> int:
    """GET a run's whole status as start_run's client does; returns its size in bytes (read in
    pieces and dropped: the bench measures the API, not its own JSON parsing)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {CLIENT_TOKEN}"})  # noqa: S310
    size = 0
    with urllib.request.urlopen(request, timeout=LONG_TIMEOUT) as response:  # noqa: S310 - our own API
        while piece := response.read(1 << 20):
            size += len(piece)
    return size


async def whole_status(api: ApiClient, run_id: str) -> tuple[float, int]:
    """Seconds to read the whole status of a run, and its size, from a thread."""
    return await timed(asyncio.to_thread(read_whole_status, f"{api.base_url}/api/v1/grading_run/{run_id}"))


async def summary_latencies(api: ApiClient, run_id: str, n: int = 20) -> list[float]:
    latencies = []
    for _ in range(n):
        took, resp = await timed(api.request("GET", f"/api/v1/grading_run/{run_id}", params={"summary": 1}, auth=True))
        if resp.status != 200 or "student_statuses" in resp.json:
            raise RuntimeError(f"summary answered {resp.status}: {resp.body[:200]!r}")
        latencies.append(took)
    return latencies


async def claim_latencies(api: ApiClient, worker: str, claims: int) -> list[float]:
    """poll -> job latency, each job reported at once so the worker's slots stay free."""
    latencies = []
    for _ in range(claims):
        started = time.perf_counter()
        resp = await api.poll(worker, wait=0)
        latencies.append(time.perf_counter() - started)
        if resp.status != 200:
            raise RuntimeError(f"poll answered {resp.status}: {resp.body[:200]!r}")
        await api.report(worker, resp.json["job_id"], result="ok")
    return latencies


class Heartbeats:
    """Keeps a worker alive all through the bench, recording when each heartbeat went and how
    long its answer took (a failed or timed-out heartbeat is counted, not fatal)."""

    def __init__(self, api: ApiClient, worker: str) -> None:
        self.api = api
        self.worker = worker
        self.samples: list[tuple[float, float]] = []
        self.failures = 0
        self.stopping = False
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Let the heartbeat in flight finish (cancelling it mid-request makes Tornado complain)."""
        self.stopping = True
        await self.task

    async def _run(self) -> None:
        while not self.stopping:
            started = time.perf_counter()
            try:
                ok = (await self.api.heartbeat(self.worker)).status == 200
            except ConnectionError:
                ok = False
            self.samples.append((started, time.perf_counter() - started))
            self.failures += not ok
            await asyncio.sleep(0.02)

    def between(self, start: float, end: float) -> list[float]:
        return sorted(latency for at, latency in self.samples if start <= at <= end)


async def requeue_latency(api: ApiClient) -> float:
    run_id = await api.submit_and_start(run_config(students=1))
    silent = await api.register(slots=1)  # names its slots: not a legacy grader, so one timeout applies
    assert (await api.poll(silent, wait=0)).status == 200
    assert (await api.heartbeat(silent)).status == 200
    last_beat = time.perf_counter()
    for _ in range(100_000):
        if (await api.status(run_id))["student_statuses"][0]["status"] == "queued":
            elapsed = time.perf_counter() - last_beat
            await cancel(api, run_id)  # clear the queue
            return elapsed
        await asyncio.sleep(0.01)
    raise AssertionError("the silent worker's job was never requeued")


class Figures:
    """Every figure, nan until measured."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def __getitem__(self, name: str) -> float:
        return self.values.get(name, NAN)

    def __setitem__(self, name: str, value: float) -> None:
        self.values[name] = value


async def settled(api: ApiClient, run_id: str, within_s: float = 300.0) -> None:
    """Wait until the API answers again after a run-sized operation (cancelling 100,000 jobs
    holds the store for a while), so that the next figures measure what they say."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            resp = await api.request("GET", f"/api/v1/grading_run/{run_id}", params={"summary": 1}, auth=True)
            if resp.status == 200 and resp.json["status"] == "cancelled":
                return
        except ConnectionError:
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the API did not answer normally within {within_s:g} s")


async def bench(args: argparse.Namespace, api: ApiClient, proc: ApiProcess, fig: Figures) -> None:
    claimer = await api.register(slots=64)
    heartbeats = Heartbeats(api, claimer)
    try:
        await measure(args, api, proc, fig, claimer, heartbeats)
    finally:
        await heartbeats.stop()
        if heartbeats.failures:
            print(f"  ({heartbeats.failures} heartbeats failed or timed out during the bench)")


async def measure(
    args: argparse.Namespace, api: ApiClient, proc: ApiProcess, fig: Figures, claimer: str, heartbeats: Heartbeats
) -> None:
    print(f"claims with ~1,000 queued ({args.claims} claims) ...", flush=True)
    small_lat: list[float] = []
    small = await step("submit and start a 1,000-student run", api.submit_and_start(run_config(students=1000)))
    if small:
        small_lat = await step("claims at ~1k queued", claim_latencies(api, claimer, args.claims)) or []
        await step("cancel the 1,000-student run", cancel(api, small))

    print(f"a {args.students:,}-student run: submit, start, status, summary ...", flush=True)
    submitted_at = time.perf_counter()
    run_id = await step("submit", submit(api, args.students))
    fig["submit_s"] = time.perf_counter() - submitted_at
    beats = heartbeats.between(submitted_at, submitted_at + fig["submit_s"])
    if run_id:
        started_at = time.perf_counter()
        if await step("start", start(api, run_id)) is None:
            fig["start_s"] = time.perf_counter() - started_at
        start_beats = heartbeats.between(started_at, started_at + fig["start_s"])
        status = await step("whole status", whole_status(api, run_id))
        if status:
            fig["status_s"], size = status
            print(f"  whole status: {fig['status_s']:.3f} s ({size / 1e6:.1f} MB; target < 0.3 s)")
        summaries = await step("summary", summary_latencies(api, run_id))
        if summaries:
            fig["summary_ms"] = statistics.median(summaries) * 1000
            print(f"  summary: median {fig['summary_ms']:.1f} ms, max {max(summaries) * 1000:.1f} ms (target < 20 ms)")
        print(f"  submit {fig['submit_s']:.2f} s, start {fig['start_s']:.2f} s")
        print(f"  heartbeats during the submission: {percentiles(beats)} (target max 100 ms)")
        print(f"  heartbeats while it is started: {percentiles(start_beats)}")
        # Out of the queue before it is filled to the large size, so "~100k queued" is that run.
        await step("cancel the 10,000-student run", cancel(api, run_id))

    print(f"a {args.large_queue:,}-student run: submit, start, claims, whole status ...", flush=True)
    submitted_at = time.perf_counter()
    big = await step(f"submit {args.large_queue:,} students", submit(api, args.large_queue))
    print(f"  submitted in {time.perf_counter() - submitted_at:.1f} s", flush=True)
    if big:
        started_at = time.perf_counter()
        await step(f"start {args.large_queue:,} students", start(api, big))
        print(f"  started in {time.perf_counter() - started_at:.1f} s", flush=True)
        large_lat = await step("claims at ~100k queued", claim_latencies(api, claimer, args.claims))
        if small_lat and large_lat:
            small_med, large_med = statistics.median(small_lat), statistics.median(large_lat)
            fig["claim_growth_ratio"] = large_med / small_med
            print(f"  claim median: {small_med * 1000:.2f} ms at ~1k queued, {large_med * 1000:.2f} ms at ~100k "
                  f"(ratio {fig['claim_growth_ratio']:.2f}, target <= 1.5)")  # fmt: skip
        # Heartbeats with the big run running and nothing fetched: what the fetch adds is the
        # difference (the reaper's periodic sweep counts every running run's jobs meanwhile).
        idle_at = time.perf_counter()
        await asyncio.sleep(args.baseline_s)
        print(f"  heartbeats with nothing fetched ({args.baseline_s:g} s): "
              f"{percentiles(heartbeats.between(idle_at, time.perf_counter()))}")  # fmt: skip
        fetched_at = time.perf_counter()
        status = await step("whole status of the big run", whole_status(api, big))
        fetch_beats = heartbeats.between(fetched_at, time.perf_counter())
        if status:
            fig["big_status_s"], size = status
            fig["big_status_heartbeat_max_ms"] = fetch_beats[-1] * 1000 if fetch_beats else NAN
            print(f"  whole status of {args.large_queue:,} students: {fig['big_status_s']:.2f} s ({size / 1e6:.0f} MB)")
            print(f"  heartbeats meanwhile: {percentiles(fetch_beats)} (target max 100 ms)")
    assert proc.proc is not None
    fig["rss_mb"] = rss_mb(proc.proc.pid)
    print(f"  API resident memory with the runs above stored: {fig['rss_mb']:.0f} MB")
    if big:
        cancelled_at = time.perf_counter()
        await step("cancel the big run", cancel(api, big))
        took = time.perf_counter() - cancelled_at
        print(f"  cancelled in {took:.1f} s; heartbeats meanwhile: "
              f"{percentiles(heartbeats.between(cancelled_at, time.perf_counter()))}")  # fmt: skip
        await step("wait for the store to catch up", settled(api, big))

    print("dead-worker requeue ...", flush=True)
    requeues = []
    for _ in range(3):
        took = await step("requeue", requeue_latency(api))
        if took is not None:
            requeues.append(took)
    if requeues:
        fig["requeue_ratio"] = max(requeues) / WORKER_TIMEOUT
        worst = fig["requeue_ratio"]
        print(f"  requeued {', '.join(f'{r:.2f}' for r in requeues)} s after the last heartbeat "
              f"(worker timeout {WORKER_TIMEOUT:g} s; worst ratio {worst:.2f}, target <= 1.1)")  # fmt: skip
    if run_id:
        await status_after_restart(api, proc, run_id, args.students)


async def status_after_restart(api: ApiClient, proc: ApiProcess, run_id: str, students: int) -> None:
    """The baseline of the whole-status figure, in the same run: an API process that did not
    submit the run reads its jobs' whole documents once (as every read did before the fixed
    parts were kept, broadway/run_status_parts.py), then answers from what it kept."""
    print(f"whole status of the {students:,}-student run after an API restart ...", flush=True)
    await asyncio.to_thread(proc.stop)
    await asyncio.to_thread(proc.start)
    first = await step("first whole status", whole_status(api, run_id))
    again = await step("second whole status", whole_status(api, run_id))
    if first and again:
        print(f"  first read {first[0]:.3f} s (whole documents), then {again[0]:.3f} s (kept fixed parts): "
              f"ratio {again[0] / first[0]:.2f}")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=10_000, help="size of the submit/start/status run")
    parser.add_argument("--large-queue", type=int, default=100_000, help="size of the big run")
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--baseline-s", type=float, default=10.0, help="heartbeats timed with nothing fetched")
    args = parser.parse_args()
    print(f"measured on: {machine()}", flush=True)

    fig = Figures()
    with tempfile.TemporaryDirectory(prefix="broadway-load-") as tmp:
        proc = ApiProcess(
            Path(tmp) / "api", "--heartbeat-interval", "1", "--worker-timeout", str(WORKER_TIMEOUT),
            "--log-level", "WARNING",
        )  # fmt: skip
        try:
            await asyncio.to_thread(proc.start)
            await step("bench", bench(args, ApiClient(proc.url), proc, fig))
        except Exception as exc:  # the figures line is printed whatever happened
            print(f"  STEP FAILED: starting the API: {exc}")
            FAILED_STEPS.append("starting the API")
        finally:
            await asyncio.to_thread(proc.stop)
            if FAILED_STEPS:  # what the API said meanwhile (its logs hold no secrets)
                print("the API's log, last 40 lines:\n" + "\n".join(proc.log().splitlines()[-40:]))
    print(
        f"submit_s={fig['submit_s']:.3f} start_s={fig['start_s']:.3f} status_s={fig['status_s']:.3f} "
        f"claim_growth_ratio={fig['claim_growth_ratio']:.3f} requeue_ratio={fig['requeue_ratio']:.3f} "
        f"rss_mb={fig['rss_mb']:.1f} summary_ms={fig['summary_ms']:.1f} big_status_s={fig['big_status_s']:.3f} "
        f"big_status_heartbeat_max_ms={fig['big_status_heartbeat_max_ms']:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
