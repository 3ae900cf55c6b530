"""End-to-end cost of Broadway over running the same containers by hand, in the same run.

  e2e    100 one-stage jobs (`true` in the busybox image) submitted to an API child process and
         run by one grader child process with 2 slots; timed by the run's own started_at and
         finished_at.
  bare   the same 100 containers, same isolation options (grader.executor.container_options),
         created, started, waited for and removed through the docker SDK, 2 at a time.
  pickup an idle grader's latency from a job being queued to it being claimed (server
         timestamps), over single-job runs submitted one after another.

Last line: e2e_s=<f> bare_s=<f> ratio=<f>   (target ratio <= 1.10)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker

from grader.config import Limits
from grader.executor import container_options
from tests.helpers import ApiClient, eventually
from tests.processes import ApiProcess, GraderProcess
from utils.images import build_image

IMAGE = "broadway-bench-busybox:latest"
STAGE = {"image": IMAGE, "entrypoint": ["true"]}


def bare_loop(client: docker.DockerClient, jobs: int, parallel: int, work_dir: Path) -> float:
    def one(i: int) -> None:
        job_dir = work_dir / f"bare{i}"
        job_dir.mkdir(mode=0o777)
        container = client.containers.create(IMAGE, **container_options(STAGE, Limits(), job_dir))
        try:
            container.start()
            assert container.wait(timeout=60)["StatusCode"] == 0
        finally:
            container.remove(force=True)
            job_dir.rmdir()

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(jobs)))
    return time.perf_counter() - started


async def e2e(api: ApiClient, jobs: int) -> float:
    run_id = await api.submit({"student_pipeline": [STAGE], "students": [{"N": str(i)} for i in range(jobs)]})
    assert (await api.start(run_id)).status == 200
    # Watched slowly (a status answer carries every job), timed by the API's own clock.
    status = await eventually(lambda: api.status(run_id), lambda s: s["status"] != "running", timeout=600, interval=0.5)
    assert status["counts"]["succeeded"] == jobs, status["counts"]
    return float(status["finished_at"] - status["started_at"])


async def pickup_latencies(api: ApiClient, samples: int) -> list[float]:
    latencies = []
    for _ in range(samples):
        await asyncio.sleep(0.3)  # let the grader settle back into its long poll
        run_id = await api.submit_and_start({"student_pipeline": [STAGE], "students": [{}]})
        status = await eventually(partial(api.status, run_id), lambda s: s["status"] != "running", timeout=60)
        job = status["student_statuses"][0]
        latencies.append(job["started_at"] - job["queued_at"])
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=30, help="pickup latency samples")
    args = parser.parse_args()

    client = docker.from_env()
    build_image(client, IMAGE)
    with tempfile.TemporaryDirectory(prefix="broadway-bench-") as tmp:
        work = Path(tmp)
        api_proc = await asyncio.to_thread(ApiProcess(work / "api").start)
        grader = GraderProcess(api_proc.url, work / "grader", "--slots", "2", log_level="INFO").start()
        try:
            api = ApiClient(api_proc.url)
            print(f"warming up (10 jobs), then {args.jobs} jobs end to end ...", flush=True)
            await e2e(api, 10)
            e2e_s = await e2e(api, args.jobs)
            print(f"  e2e:  {e2e_s:.2f} s  ({args.jobs / e2e_s:.1f} jobs/s)", flush=True)
            bare_s = await asyncio.to_thread(bare_loop, client, args.jobs, 2, work)
            print(f"  bare: {bare_s:.2f} s  ({args.jobs / bare_s:.1f} jobs/s)", flush=True)
            latencies = sorted(await pickup_latencies(api, args.samples))
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] * 1000
            print(f"  pickup latency of an idle grader over {len(latencies)} jobs: p50={p50:.1f} ms p99={p99:.1f} ms")
        finally:
            grader.stop()
            api_proc.stop()
    print(f"e2e_s={e2e_s:.3f} bare_s={bare_s:.3f} ratio={e2e_s / bare_s:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
