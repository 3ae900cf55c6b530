"""Dispatch throughput: jobs/s through the API against raw store claims/s, in the same run.

16 simulated graders (asyncio tasks in this process) register, heartbeat, poll and report over
HTTP to an API child process. The baseline uses the same nx-27017 server (a fresh database)
through the store layer, without HTTP, 16 concurrent claimers, measured two ways:
  claim only         find_one_and_update on the queue, nothing else;
  claim + report     the claim and the result write: the two store writes every job needs
                     whatever the dispatcher, so it is the ceiling for any API on this store.
The last line's store_claims_per_s is the claim + report figure, and its ratio says how much of
that ceiling the API reaches; the claim-only ratio is printed above it. Runs of 200 and 2,000
students show whether the cost per job grows with the run's size.

Last line: dispatch_jobs_per_s=<f> store_claims_per_s=<f> ratio=<f>  (the largest run's figures)
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

from bson import ObjectId

from broadway.embedded_store import EmbeddedStore
from broadway.scheduler import prepare_run
from broadway.store import connect
from tests.helpers import ApiClient, run_config
from tests.processes import ApiProcess

GRADERS = 16


async def through_api(api: ApiClient, students: int) -> float:
    """Seconds from start to the last report for a run of `students` trivial jobs; returns jobs/s."""
    run_id = await api.submit(run_config(students=students))
    workers = [await api.register() for _ in range(GRADERS)]
    done = 0
    # The clock stops at the last report, not at the graders' final empty long-poll.
    last_report = [0.0]
    finished = asyncio.Event()

    async def heartbeats(worker: str) -> None:
        while not finished.is_set():
            assert (await api.heartbeat(worker)).status == 200
            await asyncio.sleep(1.0)

    async def grader(worker: str) -> None:
        nonlocal done
        while True:
            resp = await api.poll(worker, wait=0.5)
            if resp.status == 412:
                return
            assert resp.status == 200, resp.body
            report = await api.report(worker, resp.json["job_id"], result="ok")
            assert report.status == 200, report.body
            done += 1
            last_report[0] = time.perf_counter()

    beating = [asyncio.ensure_future(heartbeats(w)) for w in workers]
    started = time.perf_counter()
    assert (await api.start(run_id)).status == 200
    await asyncio.gather(*(grader(w) for w in workers))
    elapsed = last_report[0] - started
    finished.set()
    await asyncio.gather(*beating)
    assert done == students, (done, students)
    status = await api.status(run_id)
    assert status["status"] == "succeeded", status["status"]
    return students / elapsed


async def raw_store(url: str, students: int, with_report: bool) -> float:
    """Jobs/s straight through the store layer, 16 concurrent claimers, same store server."""
    store = connect(url)
    await store.ensure_indexes()
    prepared = prepare_run(run_config(students=students))
    await store.jobs.insert_many(prepared.jobs)
    await store.runs.insert(prepared.run_id, prepared.n_students, None, None)
    await store.jobs.queue_students(prepared.run_id, prepared.n_students)
    claimed = 0

    async def claimer(n: int) -> None:
        nonlocal claimed
        worker = f"bench-{n}"
        while (job := await store.jobs.claim_next(worker)) is not None:
            if with_report:
                await store.jobs.report(ObjectId(job.id), worker, job.attempt_id, True, "ok", "fingerprint")
            claimed += 1

    started = time.perf_counter()
    await asyncio.gather(*(claimer(n) for n in range(GRADERS)))
    elapsed = time.perf_counter() - started
    await store.close()
    assert claimed == students
    return students / elapsed


async def main(sizes: list[int], repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="broadway-bench-") as tmp:
        store = EmbeddedStore(Path(tmp) / "store")
        store.start()
        api_proc = ApiProcess(Path(tmp) / "api", "--mongo-url", f"mongodb://127.0.0.1:{store.port}/bench_api")
        try:
            await asyncio.to_thread(api_proc.start)
            api = ApiClient(api_proc.url)
            results = {}
            # Untimed warm-up: connections, the store's caches and files, the API's first requests.
            await through_api(api, 100)
            for size in sizes:
                # Median of three: a 200-job run lasts well under a second, so one sample is noise.
                api_rate = statistics.median([await through_api(api, size) for _ in range(repeat)])
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
            if len(sizes) > 1:
                small, large = results[sizes[0]][0], results[sizes[-1]][0]
                print(f"jobs/s at {sizes[-1]} vs {sizes[0]} students: {large / small:.3f} (1.0 = no growth in cost)")
            api_rate, raw_rate = results[sizes[-1]]
            ratio = api_rate / raw_rate
            print(f"dispatch_jobs_per_s={api_rate:.1f} store_claims_per_s={raw_rate:.1f} ratio={ratio:.3f}")
        finally:
            await asyncio.to_thread(api_proc.stop)
            store.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000], help="students per run")
    parser.add_argument("--repeat", type=int, default=3, help="API runs per size (the median is reported)")
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.repeat))
