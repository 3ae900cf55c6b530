"""Load figures for a sysadmin: big runs, claim cost as the queue grows, memory, requeue speed.

One API child process on its embedded store (a fresh temporary data dir), driven over HTTP:
  submit/start/status  a 10,000-student run: seconds to submit, to start (queue every job),
                       and to GET its status; heartbeat latency while it is submitted.
  claim growth         median poll->job latency with ~1,000 jobs queued, then with ~100,000
                       queued; their ratio (target <= 1.5: the claim must not scan the queue).
  rss                  the API process's resident memory with 100,000+ jobs stored.
  requeue              a worker claims a job and falls silent: seconds from its last heartbeat
                       to the job being queued again, as a ratio of --worker-timeout (target <= 1.1).

Last line: submit_s=<f> start_s=<f> status_s=<f> claim_growth_ratio=<f> requeue_ratio=<f> rss_mb=<f>
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import ApiClient, run_config
from tests.processes import ApiProcess

WORKER_TIMEOUT = 2.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def timed(coro: object) -> tuple[float, object]:
    started = time.perf_counter()
    result = await coro  # type: ignore[misc]
    return time.perf_counter() - started, result


async def claim_latencies(api: ApiClient, worker: str, claims: int) -> list[float]:
    """poll -> job latency, each job reported at once so the worker's slots stay free."""
    latencies = []
    for _ in range(claims):
        started = time.perf_counter()
        resp = await api.poll(worker)
        latencies.append(time.perf_counter() - started)
        assert resp.status == 200, resp.body
        assert (await api.report(worker, resp.json["job_id"], result="ok")).status == 200
    return latencies


class Heartbeats:
    """Keeps a worker alive all through the bench, recording when each heartbeat went and how
    long its answer took."""

    def __init__(self, api: ApiClient, worker: str) -> None:
        self.api = api
        self.worker = worker
        self.samples: list[tuple[float, float]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            assert (await self.api.heartbeat(self.worker)).status == 200
            self.samples.append((started, time.perf_counter() - started))
            await asyncio.sleep(0.02)

    def between(self, start: float, end: float) -> list[float]:
        return sorted(latency for at, latency in self.samples if start <= at <= end)


async def requeue_latency(api: ApiClient) -> float:
    run_id = await api.submit_and_start(run_config(students=1))
    silent = await api.register()
    assert (await api.poll(silent)).status == 200
    assert (await api.heartbeat(silent)).status == 200
    last_beat = time.perf_counter()
    for _ in range(100_000):
        if (await api.status(run_id))["student_statuses"][0]["status"] == "queued":
            elapsed = time.perf_counter() - last_beat
            await api.request("POST", f"/api/v1/grading_run/{run_id}/cancel", auth=True)  # clear the queue
            return elapsed
        await asyncio.sleep(0.01)
    raise AssertionError("the silent worker's job was never requeued")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=10_000, help="size of the submit/start/status run")
    parser.add_argument("--large-queue", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="broadway-load-") as tmp:
        proc = ApiProcess(
            Path(tmp) / "api", "--heartbeat-interval", "1", "--worker-timeout", str(WORKER_TIMEOUT),
            "--log-level", "WARNING",
        )  # fmt: skip
        await asyncio.to_thread(proc.start)
        assert proc.proc is not None
        try:
            api = ApiClient(proc.url)
            api.http.defaults["request_timeout"] = 600
            claimer = await api.register(slots=64)
            heartbeats = Heartbeats(api, claimer)

            print(f"claims with ~1,000 queued ({args.claims} claims) ...", flush=True)
            small = await api.submit_and_start(run_config(students=1000))
            small_lat = await claim_latencies(api, claimer, args.claims)
            await api.request("POST", f"/api/v1/grading_run/{small}/cancel", auth=True)

            print(f"a {args.students:,}-student run: submit, start, status ...", flush=True)
            submitted_at = time.perf_counter()
            submit_s, run_id = await timed(api.submit(run_config(students=args.students)))
            beats = heartbeats.between(submitted_at, submitted_at + submit_s)
            started_at = time.perf_counter()
            start_s, _ = await timed(api.start(run_id))
            start_beats = heartbeats.between(started_at, started_at + start_s)
            status_s, status = await timed(api.request("GET", f"/api/v1/grading_run/{run_id}", auth=True, timeout=600))
            body_mb = len(status.body) / 1e6  # type: ignore[attr-defined]
            print(f"  submit {submit_s:.2f} s, start {start_s:.2f} s, status {status_s:.2f} s ({body_mb:.1f} MB)")
            print(
                f"  heartbeats during the submission: n={len(beats)} p50={statistics.median(beats) * 1000:.1f} ms "
                f"p99={beats[int(0.99 * (len(beats) - 1))] * 1000:.1f} ms max={beats[-1] * 1000:.1f} ms (target 100 ms)"
            )
            print(f"  heartbeats while it is started: n={len(start_beats)} max={start_beats[-1] * 1000:.1f} ms")

            more = args.large_queue - args.students
            print(f"filling the queue to ~{args.large_queue:,} jobs ...", flush=True)
            fill = await api.submit_and_start(run_config(students=more))
            large_lat = await claim_latencies(api, claimer, args.claims)
            rss = rss_mb(proc.proc.pid)
            small_med, large_med = statistics.median(small_lat), statistics.median(large_lat)
            growth = large_med / small_med
            print(f"  claim median: {small_med * 1000:.2f} ms at ~1k queued, {large_med * 1000:.2f} ms at ~100k "
                  f"(ratio {growth:.2f}, target <= 1.5)")  # fmt: skip
            print(f"  API resident memory with {args.large_queue + 1000:,} jobs stored: {rss:.0f} MB")

            print("dead-worker requeue ...", flush=True)
            for run in (run_id, fill):
                await api.request("POST", f"/api/v1/grading_run/{run}/cancel", auth=True, timeout=600)
            requeues = [await requeue_latency(api) for _ in range(3)]
            requeue_ratio = max(requeues) / WORKER_TIMEOUT
            print(f"  requeued {', '.join(f'{r:.2f}' for r in requeues)} s after the last heartbeat "
                  f"(worker timeout {WORKER_TIMEOUT:g} s; worst ratio {requeue_ratio:.2f}, target <= 1.1)")  # fmt: skip
            heartbeats.task.cancel()
        finally:
            await asyncio.to_thread(proc.stop)
    print(
        f"submit_s={submit_s:.3f} start_s={start_s:.3f} status_s={status_s:.3f} "
        f"claim_growth_ratio={growth:.3f} requeue_ratio={requeue_ratio:.3f} rss_mb={rss:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
