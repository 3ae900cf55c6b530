"""Fair share between two courses: how long a small course waits behind a big one's queue.

Course A starts a run of --a-jobs (2,000) students; --b-after (5) seconds later course B, of the
same weight, starts one of --b-jobs (20). Four simulated grader slots (asyncio tasks in this
process with the grader's own GraderClient, one slot each) claim, hold each job --service-ms
(a trivial stage's run time, simulated so that the figures measure dispatch, not Docker) and
report it asking for the next. An API child process over nx-27017.

Printed:
- B's queue waits (queued_at to started_at, the API's clock) p50 and p95;
- the ideal p95 for B under an exact 50/50 share: B's k-th job (from 0) starts after k // 2
  slot cycles, a cycle being the measured mean time one slot takes per job in the same run;
  then the ratio of B's p95 to that (target <= 1.5; a FIFO queue would make B wait for all of
  A's remaining jobs);
- A's throughput loss: A's jobs/s in the shared run against a run of A alone with the same slots,
  in the same process (target <= 10%; B's 20 jobs alone take ~1% of the slots' time).

Last line: b_p95_ratio=<f> a_throughput_loss=<f>
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broadway.embedded_store import EmbeddedStore
from grader.client import GraderClient
from grader.config import GraderConfig
from tests.helpers import CLUSTER_TOKEN, ApiClient, run_config
from tests.processes import ApiProcess

SLOTS = 4


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def course_client(admin: ApiClient, name: str) -> ApiClient:
    created = await admin.request("POST", "/api/v1/courses", json_body={"name": name, "weight": 1}, auth=True)
    assert created.status == 201, created.body
    issued = await admin.request("POST", f"/api/v1/courses/{name}/tokens", json_body={"label": "bench"}, auth=True)
    assert issued.status == 201, issued.body
    return ApiClient(admin.base_url, client_token=issued.json["token"])


class Slots:
    """SLOTS simulated graders of one slot each, working until told to stop."""

    def __init__(self, api_url: str, service_s: float) -> None:
        self.clients = [
            GraderClient(GraderConfig(api_url=api_url, token=CLUSTER_TOKEN, name=f"fair-{n}", slots=1))
            for n in range(SLOTS)
        ]
        self.service_s = service_s
        self.stop = asyncio.Event()
        self.done = 0

    async def run(self) -> None:
        for client in self.clients:
            await client.register()
        try:
            await asyncio.gather(*(self._slot(client) for client in self.clients))
        finally:
            for client in self.clients:
                client.close()

    async def _slot(self, client: GraderClient) -> None:
        job = None
        while not self.stop.is_set():
            if job is None:
                job = await client.poll(wait=0.5)
                continue
            await asyncio.sleep(self.service_s)
            recorded, job_next = await client.report_and_next(job["job_id"], "ok", True, job.get("attempt"), wait=0.5)
            assert recorded
            self.done += 1
            job = job_next


async def students_of(api: ApiClient, run_id: str) -> list[dict[str, Any]]:
    status = await api.status(run_id)
    return list(status["student_statuses"])


async def finished(api: ApiClient, run_id: str) -> None:
    while True:
        resp = await api.request("GET", f"/api/v1/grading_run/{run_id}", params={"summary": 1}, auth=True)
        if resp.json["status"] in ("succeeded", "failed", "cancelled"):
            return
        await asyncio.sleep(0.2)


async def a_alone(api_url: str, a: ApiClient, n_jobs: int, service_s: float) -> tuple[float, float]:
    """A's jobs/s with the slots to itself, and the mean seconds a slot takes per job."""
    slots = Slots(api_url, service_s)
    run_id = await a.submit(run_config(students=n_jobs))
    working = asyncio.ensure_future(slots.run())
    started = time.time()
    assert (await a.start(run_id)).status == 200
    await finished(a, run_id)
    slots.stop.set()
    await working
    jobs = await students_of(a, run_id)
    elapsed = max(j["finished_at"] for j in jobs) - started
    return n_jobs / elapsed, elapsed * SLOTS / n_jobs


async def shared(
    api_url: str, a: ApiClient, b: ApiClient, args: argparse.Namespace
) -> tuple[float, list[float], float]:
    """A's jobs/s when B arrives part-way, B's queue waits, and the mean slot cycle."""
    slots = Slots(api_url, args.service_ms / 1000)
    a_run = await a.submit(run_config(students=args.a_jobs))
    b_run = await b.submit(run_config(students=args.b_jobs))
    working = asyncio.ensure_future(slots.run())
    started = time.time()
    assert (await a.start(a_run)).status == 200
    await asyncio.sleep(args.b_after)
    assert (await b.start(b_run)).status == 200
    await finished(b, b_run)
    await finished(a, a_run)
    slots.stop.set()
    await working
    a_jobs, b_jobs = await students_of(a, a_run), await students_of(b, b_run)
    last = max(j["finished_at"] for j in a_jobs + b_jobs)
    cycle = (last - started) * SLOTS / (len(a_jobs) + len(b_jobs))
    waits = [j["started_at"] - j["queued_at"] for j in b_jobs]
    a_elapsed = max(j["finished_at"] for j in a_jobs) - started
    return len(a_jobs) / a_elapsed, waits, cycle


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="broadway-fairness-") as tmp:
        store = EmbeddedStore(Path(tmp) / "store")
        store.start()
        proc = ApiProcess(Path(tmp) / "api", "--mongo-url", f"mongodb://127.0.0.1:{store.port}/fairness")
        try:
            await asyncio.to_thread(proc.start)
            admin = ApiClient(proc.url)
            a, b = await course_client(admin, "course-a"), await course_client(admin, "course-b")
            print(f"{SLOTS} slots, {args.service_ms:g} ms a job; A alone: {args.a_jobs} jobs ...", flush=True)
            alone_rate, alone_cycle = await a_alone(proc.url, a, args.a_jobs, args.service_ms / 1000)
            print(f"  A alone: {alone_rate:.1f} jobs/s (a slot takes {alone_cycle * 1000:.1f} ms a job)", flush=True)
            print(f"shared: A {args.a_jobs} jobs, B {args.b_jobs} jobs {args.b_after:g} s later ...", flush=True)
            a_rate, waits, cycle = await shared(proc.url, a, b, args)
            ideal = [(k // 2) * cycle for k in range(args.b_jobs)]
            p50, p95, ideal_p95 = statistics.median(waits), percentile(waits, 0.95), percentile(ideal, 0.95)
            ratio = p95 / ideal_p95 if ideal_p95 > 0 else float("inf")
            loss = 1 - a_rate / alone_rate
            print(
                f"  B's queue wait: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms; ideal 50/50 p95 "
                f"{ideal_p95 * 1000:.0f} ms (slot cycle {cycle * 1000:.1f} ms): ratio {ratio:.2f} (target <= 1.5)"
            )
            print(f"  A: {a_rate:.1f} jobs/s shared vs {alone_rate:.1f} alone: loss {loss * 100:.1f}% (target <= 10%)")
            print(f"b_p95_ratio={ratio:.3f} a_throughput_loss={loss:.3f}")
        finally:
            await asyncio.to_thread(proc.stop)
            store.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-jobs", type=int, default=2000)
    parser.add_argument("--b-jobs", type=int, default=20)
    parser.add_argument("--b-after", type=float, default=5.0)
    parser.add_argument("--service-ms", type=float, default=20.0)
    asyncio.run(main(parser.parse_args()))
