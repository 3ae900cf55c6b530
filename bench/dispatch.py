"""Dispatch throughput: jobs/s through the API against raw store claims/s, in the same run.

16 simulated graders (asyncio tasks in this process, each with the grader's own GraderClient and
so its kept-alive connections) register and heartbeat as the daemon does, poll once, then report
each job asking for the next in the same request (`next=1`: one round trip per job), to an API
child process. The rate runs from the run's start to its last result recorded (the API's clock),
not to the graders' last answer, which waits for a next job that never comes.
The baseline uses the same nx-27017 server (a fresh database) through the store
layer, without HTTP, 16 concurrent claimers, measured two ways:
  claim only         find_one_and_update on the queue, nothing else;
  claim + report     the claim and the result write: the two store writes every job needs
                     whatever the dispatcher, so it is the ceiling for any API on this store.
The last line's store_claims_per_s is the claim + report figure, and its ratio says how much of
that ceiling the API reaches; the claim-only ratio is printed above it. Runs of 200 and 2,000
students show whether the cost per job grows with the run's size.

Beside the rates, per job: CPU time in the API process and in this one (the graders), steadier
than jobs/s on a shared machine;
HTTP requests (every request the graders made, registration, heartbeats and final empty polls
included, over the jobs) and store operations (every command the API sent to the store during the
timed runs, submit and start included, over the jobs; counted by a pymongo CommandListener inside
the API process, which writes its counts to a file on SIGUSR1).
Then the pickup latency of one idle grader long-polling in its last report's request: from the
job's queued_at (the API's clock) to the job in the grader's hands (this process's clock, the
same machine's), over single-job runs started one after another.

Targets (printed, not asserted): ratio >= 0.6 against claim + report; jobs/s at 2,000 students
within 10% of 200; pickup p50 <= 5 ms, p99 <= 20 ms.

Last line: dispatch_jobs_per_s=<f> store_claims_per_s=<f> ratio=<f>  (the largest run's figures)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymongo import monitoring

from broadway.embedded_store import EmbeddedStore
from broadway.scheduler import prepare_run
from broadway.store import connect
from grader.client import GraderClient
from grader.config import GraderConfig
from tests.helpers import CLUSTER_TOKEN, ApiClient, run_config
from tests.processes import ApiProcess

GRADERS = 16
COUNTED_API_FLAG = "--serve-counted-api"


@dataclass
class RunFigures:
    jobs_per_s: float
    requests: int
    api_cpu_s: float
    graders_cpu_s: float
    store_commands: collections.Counter[str] = field(default_factory=collections.Counter)


class CountedApiProcess(ApiProcess):
    """The API as a child process, as usual, with a pymongo command listener in it: SIGUSR1 makes
    it write the commands it has sent to the store so far (see serve_counted_api)."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        super().__init__(data_dir, *args)
        self.counts_path = data_dir / "store-commands.json"

    def start(self, timeout: float = 30.0) -> CountedApiProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, str(Path(__file__).resolve()), COUNTED_API_FLAG, str(self.counts_path),
            "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args,
        ]  # fmt: skip
        self._spawn(cmd, self.env)
        self.wait_healthy(timeout)
        return self

    def cpu_seconds(self) -> float:
        """CPU time the API process has used (user + system): unlike jobs/s, it does not move
        with what else the machine runs."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def store_commands(self) -> collections.Counter[str]:
        """The API's store commands so far, by command name."""
        assert self.proc is not None
        self.counts_path.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not self.counts_path.exists():
            assert time.monotonic() < deadline, f"the API wrote no command counts:\n{self.log()[-2000:]}"
            await asyncio.sleep(0.01)
        return collections.Counter(json.loads(self.counts_path.read_text()))


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def serve_counted_api(counts_path: Path, api_args: list[str]) -> int:
    """Child process: the API unchanged, its store client created after the listener is
    registered, so every command it sends is counted."""
    from broadway.__main__ import main as api_main

    counter = CommandCounter()
    monitoring.register(counter)

    def write_counts(signum: int, frame: FrameType | None) -> None:
        partial = counts_path.with_suffix(".partial")
        partial.write_text(json.dumps(dict(counter.counts)))
        os.replace(partial, counts_path)

    signal.signal(signal.SIGUSR1, write_counts)
    return api_main(api_args)


def own_cpu_seconds() -> float:
    """CPU time of this process: the simulated graders, and the few requests of course staff."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def grader_client(api_url: str, n: int) -> GraderClient:
    return GraderClient(GraderConfig(api_url=api_url, token=CLUSTER_TOKEN, name=f"bench-{n}", slots=1))


async def through_api(api: ApiClient, api_proc: CountedApiProcess, students: int) -> RunFigures:
    """A run of `students` trivial jobs, timed from its start to the last report."""
    commands_before = await api_proc.store_commands()
    cpu_before = api_proc.cpu_seconds()
    graders_cpu_before = own_cpu_seconds()
    run_id = await api.submit(run_config(students=students))
    clients = [grader_client(api.base_url, n) for n in range(GRADERS)]
    done = 0
    finished = asyncio.Event()

    async def heartbeats(client: GraderClient, running: set[str]) -> None:
        # As the daemon does: every heartbeat names the jobs the grader holds.
        assert client.registration is not None
        while not finished.is_set():
            try:
                await asyncio.wait_for(finished.wait(), client.registration.heartbeat_s)
            except TimeoutError:
                await client.heartbeat(sorted(running))

    async def grader(client: GraderClient, running: set[str]) -> None:
        # As a grader in steady state: one request per job, the report asking for the next.
        nonlocal done
        job = await client.poll(wait=0.5)
        while job is not None:
            running.add(job["job_id"])
            recorded, next_job = await client.report_and_next(job["job_id"], "ok", True, job.get("attempt"), wait=0.5)
            assert recorded
            running.discard(job["job_id"])
            done += 1
            job = next_job

    try:
        for client in clients:
            await client.register()
        running: list[set[str]] = [set() for _ in clients]
        beating = [asyncio.ensure_future(heartbeats(c, r)) for c, r in zip(clients, running, strict=True)]
        # The API's clock (the same machine's): the run starts, and its last result is recorded.
        # Not when the graders return: the last report's answer waits `wait` for a next job.
        started = time.time()
        assert (await api.start(run_id)).status == 200
        await asyncio.gather(*(grader(c, r) for c, r in zip(clients, running, strict=True)))
        finished.set()
        await asyncio.gather(*beating)
    finally:
        for client in clients:
            client.close()
    assert done == students, (done, students)
    status = await api.status(run_id)
    assert status["status"] == "succeeded", status["status"]
    elapsed = max(job["finished_at"] for job in status["student_statuses"]) - started
    cpu = api_proc.cpu_seconds() - cpu_before
    graders_cpu = own_cpu_seconds() - graders_cpu_before
    commands = await api_proc.store_commands() - commands_before
    return RunFigures(students / elapsed, sum(c.requests_sent for c in clients), cpu, graders_cpu, commands)


async def pickup_latencies(api: ApiClient, samples: int) -> tuple[list[float], list[float]]:
    """Seconds from a job's queued_at to the job in the hands of a grader that was long-polling,
    and the first part of it, from queued_at to the API's claim (its started_at)."""
    client = grader_client(api.base_url, GRADERS)
    received: asyncio.Queue[float] = asyncio.Queue()

    async def idle_grader() -> None:
        # Long-polls in the report's request once it has had its first job, as in steady state.
        job = None
        while True:
            if job is None:
                job = await client.poll(wait=client.config.poll_wait_s)
                continue
            await received.put(time.time())
            recorded, job = await client.report_and_next(
                job["job_id"], "ok", True, job.get("attempt"), wait=client.config.poll_wait_s
            )
            assert recorded

    latencies, claims = [], []
    try:
        await client.register()
        polling = asyncio.ensure_future(idle_grader())
        for _ in range(samples):
            run_id = await api.submit(run_config(students=1))
            # Idle: the grader has reported the last job and is back in its long poll.
            await asyncio.sleep(0.05)
            assert (await api.start(run_id)).status == 200
            in_hand = await asyncio.wait_for(received.get(), 30)
            job = (await api.status(run_id))["student_statuses"][0]
            latencies.append(in_hand - job["queued_at"])
            claims.append(job["started_at"] - job["queued_at"])
        polling.cancel()
    finally:
        client.close()
    return sorted(latencies), sorted(claims)


async def raw_store(url: str, students: int, with_report: bool) -> float:
    """Jobs/s straight through the store layer, 16 concurrent claimers, same store server."""
    store = connect(url)
    await store.ensure_indexes()
    plan = prepare_run(run_config(students=students))
    await store.jobs.insert_plan(plan)
    await store.runs.insert(plan.run_id, plan.n_students, None, None)
    await store.jobs.queue_students(plan.run_id, plan.n_students)
    claimed = 0

    async def claimer(n: int) -> None:
        nonlocal claimed
        worker = f"bench-{n}"
        while (job := await store.jobs.claim_next(worker)) is not None:
            if with_report:
                await store.jobs.report(job.id, worker, job.attempt_id, True, "ok", "fingerprint")
            claimed += 1

    started = time.perf_counter()
    await asyncio.gather(*(claimer(n) for n in range(GRADERS)))
    elapsed = time.perf_counter() - started
    await store.close()
    assert claimed == students
    return students / elapsed


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


async def main(sizes: list[int], repeat: int, pickup_samples: int) -> None:
    with tempfile.TemporaryDirectory(prefix="broadway-bench-") as tmp:
        store = EmbeddedStore(Path(tmp) / "store")
        store.start()
        api_proc = CountedApiProcess(Path(tmp) / "api", "--mongo-url", f"mongodb://127.0.0.1:{store.port}/bench_api")
        try:
            await asyncio.to_thread(api_proc.start)
            api = ApiClient(api_proc.url)
            results = {}
            # Untimed warm-up: connections, the store's caches and files, the API's first requests.
            await through_api(api, api_proc, 100)
            for size in sizes:
                # Median of three: a 200-job run lasts well under a second, so one sample is noise.
                runs = [await through_api(api, api_proc, size) for _ in range(repeat)]
                api_rate = statistics.median(r.jobs_per_s for r in runs)
                jobs = size * len(runs)
                requests_per_job = sum(r.requests for r in runs) / jobs
                cpu_ms_per_job = sum(r.api_cpu_s for r in runs) / jobs * 1000
                graders_cpu_ms_per_job = sum(r.graders_cpu_s for r in runs) / jobs * 1000
                commands = sum((r.store_commands for r in runs), collections.Counter[str]())
                base = f"mongodb://127.0.0.1:{store.port}/bench_raw_{size}"
                claim_only = await raw_store(base + "_claim", size, with_report=False)
                claim_report = await raw_store(base + "_cycle", size, with_report=True)
                results[size] = (api_rate, claim_report)
                print(
                    f"students={size:>6}  api={api_rate:7.1f} jobs/s  store claim only={claim_only:7.1f}/s "
                    f"(ratio {api_rate / claim_only:.3f})  store claim+report={claim_report:7.1f}/s "
                    f"(ratio {api_rate / claim_report:.3f})",
                    flush=True,
                )
                by_name = ", ".join(f"{name} {count / jobs:.2f}" for name, count in commands.most_common())
                print(
                    f"{'':16}per job: {requests_per_job:.2f} HTTP requests, "
                    f"CPU {cpu_ms_per_job:.2f} ms in the API, {graders_cpu_ms_per_job:.2f} ms in the graders, "
                    f"{sum(commands.values()) / jobs:.2f} store operations ({by_name})",
                    flush=True,
                )
            if len(sizes) > 1:
                small, large = results[sizes[0]][0], results[sizes[-1]][0]
                print(
                    f"jobs/s at {sizes[-1]} vs {sizes[0]} students: {large / small:.3f} "
                    "(1.0 = no growth in cost; target >= 0.9)"
                )
            if pickup_samples:
                latencies, claims = await pickup_latencies(api, pickup_samples)
                p50, p99 = statistics.median(latencies) * 1000, percentile(latencies, 0.99) * 1000
                print(
                    f"pickup of an idle long-polling grader over {len(latencies)} jobs: "
                    f"p50={p50:.1f} ms p99={p99:.1f} ms (target <= 5 / 20 ms); of which queued to claimed: "
                    f"p50={statistics.median(claims) * 1000:.1f} ms p99={percentile(claims, 0.99) * 1000:.1f} ms",
                    flush=True,
                )
            api_rate, raw_rate = results[sizes[-1]]
            ratio = api_rate / raw_rate
            print(f"target ratio against store claim+report >= 0.6; measured {ratio:.3f}")
            print(f"dispatch_jobs_per_s={api_rate:.1f} store_claims_per_s={raw_rate:.1f} ratio={ratio:.3f}")
        finally:
            await asyncio.to_thread(api_proc.stop)
            store.stop()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == COUNTED_API_FLAG:
        sys.exit(serve_counted_api(Path(sys.argv[2]), sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000], help="students per run")
    parser.add_argument("--repeat", type=int, default=3, help="API runs per size (the median is reported)")
    parser.add_argument("--pickup-samples", type=int, default=200, help="single-job runs for the pickup latency")
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.repeat, args.pickup_samples))
