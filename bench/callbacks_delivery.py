"""Callback delivery latency: from a job's delivery_due being set to the receiver's arrival.

One deliverer (as in an API process) over a fresh embedded nx-27017 store, and a receiver on
loopback in this process. Job documents are inserted terminal; then, per job, the pending
delivery is recorded as the terminal update would record it (DeliveryStore.set_pending: one
store update) and the deliverer notified, as the process that ends a job does. Measured from
just before that update to the receiver's arrival, three ways:
  one at a time    each callback awaited before the next is recorded (pure latency);
  burst            all N recorded back to back (queueing behind the 8 concurrent sends);
  scan only        no notify: what a delivery recorded by another API process waits (the scan).

Target (printed, not asserted): p99 < 100 ms one at a time and in bursts with notify.
Last line: callback_p50_ms=<f> callback_p99_ms=<f>  (one at a time)
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

import tornado.httpserver
import tornado.netutil
import tornado.web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broadway.callbacks import make_deliverer
from broadway.callbacks.signing import verify
from broadway.embedded_store import EmbeddedStore
from broadway.store import Store, connect
from broadway.store.ids import new_id

SECRET = "bench-secret-" + "f" * 32


class Receiver(tornado.web.RequestHandler):
    def initialize(self, arrivals: dict[str, float], waiters: dict[str, asyncio.Future[float]]) -> None:
        self.arrivals = arrivals
        self.waiters = waiters

    def post(self) -> None:
        at = time.time()
        if not verify(SECRET, self.request.body, self.request.headers.get("Broadway-Signature")):
            self.set_status(401)
            return
        job_id = json.loads(self.request.body)["job_id"]
        self.arrivals.setdefault(job_id, at)
        waiter = self.waiters.pop(job_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(at)
        self.finish(b"{}")


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000, ordered[-1] * 1000


async def insert_jobs(store: Store, n: int) -> list[str]:
    ids = [new_id() for _ in range(n)]
    docs = [
        {"_id": i, "status": "succeeded", "work_id": f"w{k}", "grade": 1.0, "comments": []} for k, i in enumerate(ids)
    ]
    await store.db.jobs.insert_many(docs)
    return [str(i) for i in ids]


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        embedded = EmbeddedStore(Path(tmp))
        embedded.start()
        try:
            await bench(embedded.url, n)
        finally:
            embedded.stop()


async def bench(url: str, n: int) -> None:
    store = connect(url)
    await store.ensure_indexes()
    arrivals: dict[str, float] = {}
    waiters: dict[str, asyncio.Future[float]] = {}
    app = tornado.web.Application([(r"/cb", Receiver, {"arrivals": arrivals, "waiters": waiters})])
    server = tornado.httpserver.HTTPServer(app)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    target = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/cb"
    deliverer = make_deliverer(store.deliveries, SECRET, ())
    deliverer.start()
    loop = asyncio.get_running_loop()
    try:
        # Warm up connections and code paths.
        for job_id in await insert_jobs(store, 5):
            waiters[job_id] = loop.create_future()
            await store.deliveries.set_pending("job", job_id, target, time.time(), 3600)
            deliverer.notify()
            await asyncio.wait_for(waiters[job_id], 10)

        one_at_a_time = []
        for job_id in await insert_jobs(store, n):
            waiters[job_id] = waiter = loop.create_future()
            started = time.time()
            await store.deliveries.set_pending("job", job_id, target, started, 3600)
            deliverer.notify()
            one_at_a_time.append(await asyncio.wait_for(waiter, 10) - started)

        burst_ids = await insert_jobs(store, n)
        recorded: dict[str, float] = {}
        burst_waiters = []
        for job_id in burst_ids:
            waiters[job_id] = loop.create_future()
            burst_waiters.append(waiters[job_id])
            recorded[job_id] = time.time()
            await store.deliveries.set_pending("job", job_id, target, recorded[job_id], 3600)
            deliverer.notify()
        await asyncio.wait_for(asyncio.gather(*burst_waiters), 60)
        burst = [arrivals[j] - recorded[j] for j in burst_ids]

        scan_only = []
        for job_id in await insert_jobs(store, 20):
            # Let the deliverer settle the last one and go back to waiting for its next scan.
            await asyncio.sleep(0.2)
            waiters[job_id] = waiter = loop.create_future()
            started = time.time()
            await store.deliveries.set_pending("job", job_id, target, started, 3600)
            scan_only.append(await asyncio.wait_for(waiter, 10) - started)
    finally:
        await deliverer.stop()
        server.stop()
        await store.close()

    for name, samples in (("one at a time", one_at_a_time), ("burst", burst), ("scan only", scan_only)):
        p50, p99, worst = quantiles(samples)
        print(f"{name:14s} n={len(samples):4d}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  max {worst:7.1f} ms", flush=True)
    p50, p99, _ = quantiles(one_at_a_time)
    print(f"callback_p50_ms={p50:.1f} callback_p99_ms={p99:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="callbacks per measurement (default 200)")
    asyncio.run(main(parser.parse_args().n))
