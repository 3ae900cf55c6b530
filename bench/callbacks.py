"""Single jobs end to end: callback latency and throughput against the same jobs as one run.

A real API process (embedded store), one real grader process, real Docker (busybox, one stage
printing a JSON response) and a callback receiver on loopback in this process.
  queued   N single jobs (POST /api/v1/job, each with a callback_url) queued before the grader
           starts, as a run's jobs are; per job, the time from its finished_at (GET
           /api/v1/job/{id}) to its signed callback's arrival.
  streamed N more submitted one by one while the grader works, as an LMS sends them.
  run      the same N jobs as one grading run, through the same grader.
Throughput is jobs per second from the first job's start to the last job's end, in each mode;
the ratio single/run is printed (target >= 0.9), with the callback p50/p99 (target p99 < 100 ms).
Figures are printed, not asserted. Needs the Docker engine and `make docker`'s busybox image.

    .venv/bin/python bench/callbacks.py --jobs 500 --slots 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broadway.callbacks.signing import SIGNATURE_HEADER, verify
from utils.images import build_image
from utils.processes import ApiProcess, GraderProcess

IMAGE = "broadway-test-busybox:latest"
SECRET = "bench-callback-secret-" + "c" * 32
CLUSTER, CLIENT = "bench-cluster-" + "a" * 32, "bench-client-" + "b" * 32
RESPONSE = '{"success": true, "grade": 1, "comments": ["ok"]}'
STAGE = {"image": IMAGE, "entrypoint": ["sh", "-c", f"echo '{RESPONSE}'"]}


class Receiver(tornado.web.RequestHandler):
    def initialize(self, arrivals: dict[str, float], bad: list[str]) -> None:
        self.arrivals = arrivals
        self.bad = bad

    def post(self) -> None:
        at = time.time()
        body = json.loads(self.request.body)
        if not verify(SECRET, self.request.body, self.request.headers.get(SIGNATURE_HEADER)):
            self.bad.append(str(body.get("job_id")))
        self.arrivals.setdefault(str(body.get("job_id")), at)
        self.finish(b"{}")


class Api:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = tornado.httpclient.AsyncHTTPClient(max_clients=16)

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.http.fetch(
            self.url + path,
            method=method,
            body=json.dumps(body) if body is not None else ("" if method == "POST" else None),
            headers={"Authorization": f"Bearer {CLIENT}", "Content-Type": "application/json"},
            request_timeout=60,
        )
        return json.loads(response.body or b"{}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def submit_singles(api: Api, n: int, callback: str) -> list[str]:
    ids = []
    for i in range(n):
        body = {"pipeline": [STAGE], "callback_url": callback, "work_id": str(i)}
        created = await api.call("POST", "/api/v1/job", body)
        ids.append(created["id"])
    return ids


async def single_jobs(api: Api, n: int, callback: str, arrivals: dict[str, float]) -> tuple[float, list[float]]:
    """Submit n single jobs, wait for every callback; (throughput, callback latencies in ms)."""
    return await finished_singles(api, await submit_singles(api, n, callback), arrivals)


async def finished_singles(api: Api, ids: list[str], arrivals: dict[str, float]) -> tuple[float, list[float]]:
    """Wait for every callback of these jobs; (throughput, callback latencies in ms)."""
    n = len(ids)
    deadline = time.monotonic() + 60 + 5 * n
    while len(set(ids) & arrivals.keys()) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(set(ids) & arrivals.keys())} of {n} callbacks arrived")
        await asyncio.sleep(0.2)
    jobs = await asyncio.gather(*(api.call("GET", f"/api/v1/job/{job_id}") for job_id in ids))
    failed = [j["id"] for j in jobs if j["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} single jobs did not succeed, e.g. {jobs[ids.index(failed[0])]}")
    latencies = [(arrivals[j["id"]] - j["finished_at"]) * 1000 for j in jobs]
    span = max(j["finished_at"] for j in jobs) - min(j["started_at"] for j in jobs)
    return n / span, latencies


async def one_run(api: Api, n: int) -> float:
    """The same n jobs as one grading run; its throughput."""
    config = {"student_pipeline": [STAGE], "students": [{"STUDENT_ID": str(i)} for i in range(n)]}
    run_id = (await api.call("POST", "/api/v1/grading_run", {"json_payload": json.dumps(config)}))["id"]
    await api.call("POST", f"/api/v1/grading_run/{run_id}")
    deadline = time.monotonic() + 60 + 5 * n
    while True:
        status = await api.call("GET", f"/api/v1/grading_run/{run_id}")
        if status["status"] in ("succeeded", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the run did not end: {status['status']}")
        await asyncio.sleep(0.5)
    jobs = status["student_statuses"]
    if status["status"] != "succeeded":
        raise SystemExit(f"the run ended {status['status']}: {[j for j in jobs if j['status'] != 'succeeded'][:1]}")
    span = max(j["finished_at"] for j in jobs) - min(j["started_at"] for j in jobs)
    return n / span


async def main(args: argparse.Namespace) -> None:
    client = docker.from_env(timeout=120)
    build_image(client, IMAGE)
    client.close()
    arrivals: dict[str, float] = {}
    bad: list[str] = []
    app = tornado.web.Application([(r"/cb", Receiver, {"arrivals": arrivals, "bad": bad})])
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    callback = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/cb"
    with tempfile.TemporaryDirectory(prefix="bench-callbacks-") as tmp:
        api_process = ApiProcess(Path(tmp) / "api", "--callback-secret", SECRET, cluster_token=CLUSTER,
                                 client_token=CLIENT)  # fmt: skip
        grader = GraderProcess(api_process.url, Path(tmp) / "grader", "--slots", str(args.slots), token=CLUSTER,
                               log_level="INFO")  # fmt: skip
        try:
            await asyncio.to_thread(api_process.start)
            api = Api(api_process.url)
            # Queued before the grader starts, as the run's jobs are (one request); a warm-up job
            # first, so that no mode pays for the grader's start or its first container.
            warm_up = await submit_singles(api, 1, callback)
            queued = await submit_singles(api, args.jobs, callback)
            grader.start()
            await finished_singles(api, warm_up, arrivals)
            queued_rate, queued_latencies = await finished_singles(api, queued, arrivals)
            # Submitted one by one while the grader works, as an LMS does: the API takes the
            # submissions and sends the callbacks on the same cores as the grader and Docker.
            single_rate, latencies = await single_jobs(api, args.jobs, callback, arrivals)
            run_rate = await one_run(api, args.jobs)
        finally:
            grader.stop()
            await asyncio.to_thread(api_process.stop)
            server.stop()
    print(f"jobs={args.jobs} slots={args.slots}")
    for label, values in (("queued first", queued_latencies), ("submitted while grading", latencies)):
        print(f"callback latency (arrival - finished_at), {label}: p50={percentile(values, 0.5):.1f} ms "
              f"p99={percentile(values, 0.99):.1f} ms max={max(values):.1f} ms "
              f"mean={statistics.mean(values):.1f} ms (target p99 < 100 ms)")  # fmt: skip
    print(f"unsigned or badly signed callbacks: {len(bad)}")
    print(f"throughput: run {run_rate:.2f} jobs/s; single jobs queued first {queued_rate:.2f} jobs/s "
          f"(ratio {queued_rate / run_rate:.3f}), submitted while grading {single_rate:.2f} jobs/s "
          f"(ratio {single_rate / run_rate:.3f}) (target >= 0.9)")  # fmt: skip
    every = queued_latencies + latencies
    print(f"callback_p50_ms={percentile(every, 0.5):.1f} callback_p99_ms={percentile(every, 0.99):.1f} "
          f"ratio_queued={queued_rate / run_rate:.3f} ratio_streamed={single_rate / run_rate:.3f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--slots", type=int, default=1, help="the grader's --slots (default 1)")
    asyncio.run(main(parser.parse_args()))
