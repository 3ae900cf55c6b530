"""GET /metrics after a known workload, read back with prometheus-client's own parser.

Counters and histograms are per process and the tests share one, so each test compares a
scrape after its workload with one before it.
"""

from __future__ import annotations

import json
import time

from prometheus_client.parser import text_string_to_metric_families

from broadway.server import ApiService
from tests import conftest
from tests.conftest import TOKENS, MakeApi
from tests.helpers import ApiClient, eventually, run_config

Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One exposition, as {(sample name, sorted labels): value}."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, Labels], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum over every sample of that name whose labels include these."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= set(ls))


async def scrape(api: ApiClient, token: str | None = None) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    resp = await api.request("GET", "/metrics", headers=headers)
    assert resp.status == 200, resp.body
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return Scrape(resp.body.decode())


async def test_counts_and_histograms_after_a_known_workload(api: ApiClient) -> None:
    before = await scrape(api)
    run_id = await api.submit_and_start(run_config(students=3))
    worker = await api.register(name="metrics-grader")

    first = (await api.poll(worker, wait=0)).json
    # Queue depth and slots, as gauges computed from the store (at most a second old).
    held = await eventually(
        lambda: scrape(api),
        lambda s: (
            s.value("broadway_jobs", status="queued", course="default") == 2
            and s.value("broadway_jobs", status="running", course="default") == 1
        ),
    )
    assert held.value("broadway_workers_alive") == 1
    assert held.value("broadway_worker_slots") == 1
    assert held.value("broadway_worker_slots_in_use") == 1
    assert held.value("broadway_store_up") == 1

    assert (await api.report(worker, first["job_id"], success=True)).status == 200
    second = (await api.poll(worker, wait=0)).json
    assert (await api.report(worker, second["job_id"], success=False)).status == 200
    third = (await api.poll(worker, wait=0)).json
    infra = {"success": False, "error": "infrastructure: Docker error: engine gone"}
    assert (await api.report(worker, third["job_id"], **infra)).status == 200
    assert (await api.poll(worker, wait=0)).status == 412
    assert (await api.status(run_id))["status"] == "succeeded"

    after = await eventually(
        lambda: scrape(api), lambda s: s.value("broadway_jobs", status="queued", course="default") == 0
    )

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    finished = "broadway_jobs_finished_total"
    assert after.types["broadway_jobs_finished"] == "counter"
    assert delta(finished, outcome="succeeded", course="default") == 1
    assert delta(finished, outcome="failed", course="default") == 1
    assert delta(finished, outcome="failed-infrastructure", course="default") == 1
    assert delta(finished, outcome="cancelled", course="default") == 0
    assert delta("broadway_job_queue_wait_seconds_count", course="default") == 3
    assert delta("broadway_job_run_seconds_count", course="default") == 3
    assert after.types["broadway_job_run_seconds"] == "histogram"
    assert delta("broadway_job_run_seconds_bucket", course="default", le="+Inf") == 3
    assert after.value("broadway_jobs", status="running", course="default") == 0
    assert after.value("broadway_worker_slots_in_use") == 0

    http = "broadway_http_request_duration_seconds_count"
    assert delta(http, route="/api/v1/grading_job/{job_id}", method="POST", code="200") == 3
    assert delta(http, route="/api/v1/grading_job", method="GET", code="200") == 3
    assert delta(http, route="/api/v1/grading_job", method="GET", code="412") == 1
    assert delta(http, route="/api/v1/grading_run", method="POST", code="200") == 1
    # The store's own commands: the claims are findAndModify, the run's jobs were inserted.
    ops = "broadway_store_operation_duration_seconds_count"
    assert delta(ops, command="findAndModify") >= 6
    assert delta(ops, command="insert") >= 1
    assert after.total("broadway_store_operation_errors_total") == before.total("broadway_store_operation_errors_total")


async def test_cancelled_jobs_are_counted(api: ApiClient) -> None:
    before = await scrape(api)
    run_id = await api.submit_and_start(run_config(students=4))
    worker = await api.register()
    assert (await api.poll(worker, wait=0)).status == 200  # one running, three queued
    resp = await api.request("POST", f"/api/v1/grading_run/{run_id}/cancel", auth=True)
    assert resp.status == 200, resp.body
    after = await scrape(api)
    counter = ("broadway_jobs_finished_total", {"outcome": "cancelled", "course": "default"})
    assert after.value(counter[0], **counter[1]) - before.value(counter[0], **counter[1]) == 4


async def test_store_gauges_are_counted_at_most_once_a_second(api: ApiClient, api_service: ApiService) -> None:
    assert api_service._server is not None
    gauges = api_service._server.request_callback.settings["store_gauges"]  # type: ignore[attr-defined]
    await scrape(api)
    start = gauges.refreshes
    began = time.monotonic()
    for _ in range(20):
        await scrape(api)
    elapsed = time.monotonic() - began
    # At most one refresh a second however fast the scrapes come (and one more for where the
    # second boundaries fall): 20 scrapes usually take well under two seconds, longer on a
    # loaded machine, which is allowed no more than its seconds.
    assert gauges.refreshes - start <= int(elapsed) + 2, (gauges.refreshes - start, elapsed)


async def test_metrics_token_protects_the_endpoint(mongo_url: str, tmp_path: object) -> None:
    config = conftest.test_config(data_dir=tmp_path, metrics_token="m" * 32)
    service = ApiService(config, mongo_url, TOKENS)
    await service.start()
    try:
        api = ApiClient(service.url)
        resp = await api.request("GET", "/metrics")
        assert resp.status == 401
        assert "metrics token" in json.loads(resp.body)["error"]
        wrong = await api.request("GET", "/metrics", headers={"Authorization": "Bearer " + "x" * 32})
        assert wrong.status == 401
        scraped = await scrape(api, token="m" * 32)
        assert scraped.value("broadway_build_info", version="0.1.0") == 1
    finally:
        await service.stop()


async def test_metrics_open_without_a_token(make_api: MakeApi) -> None:
    service = await make_api()
    scraped = await scrape(ApiClient(service.url))
    assert "broadway_jobs" in scraped.types and "broadway_http_request_duration_seconds" in scraped.types


async def test_grader_metrics_port_serves_its_hooks(api: ApiClient) -> None:
    from grader import metrics as grader_metrics

    server = grader_metrics.serve(0, "127.0.0.1")
    try:
        grader = ApiClient(f"http://127.0.0.1:{server.port}")
        before = await scrape(grader)
        grader_metrics.stage_finished("busybox-test", 1.5, 0, timed_out=False)
        grader_metrics.stage_finished("busybox-test", 30.0, None, timed_out=True)
        grader_metrics.container_started()
        grader_metrics.docker_error("create")
        grader_metrics.image_pulled(ok=False, duration_s=0.2)
        grader_metrics.api_call("poll", ok=True, duration_s=0.01)
        grader_metrics.api_call("heartbeat", ok=False)
        after = await scrape(grader)
        grader_metrics.container_removed()
    finally:
        server.stop()

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("broadway_grader_stage_duration_seconds_count", image="busybox-test") == 2
    assert delta("broadway_grader_stage_duration_seconds_sum", image="busybox-test") == 31.5
    assert delta("broadway_grader_stages_total", image="busybox-test", result="timed_out") == 1
    assert delta("broadway_grader_containers_running") == 1
    assert delta("broadway_grader_docker_errors_total", operation="create") == 1
    assert delta("broadway_grader_image_pulls_total", outcome="failed") == 1
    assert delta("broadway_grader_api_requests_total", call="poll", outcome="ok") == 1
    assert delta("broadway_grader_api_requests_total", call="heartbeat", outcome="failed") == 1
    assert "broadway_jobs_finished" not in after.types, "the grader serves the API's metrics"
