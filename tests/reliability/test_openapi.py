"""The OpenAPI document matches the handlers: schemathesis drives every operation of a live
server with generated (valid and invalid) requests. No 5xx, every 4xx a JSON `error`, every
answer as documented. Every route the API serves is in the document (the ownership walk of
tests/api/test_ownership.py goes through them all)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.helpers import CLIENT_TOKEN, CLUSTER_TOKEN
from tests.processes import ROOT, ApiProcess

SCHEMA = schemathesis.openapi.from_path(ROOT / "broadway" / "openapi.yaml")


@dataclass
class LiveApi:
    url: str
    worker_id: str


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    # A poll that names no wait is held --poll-hold: not here, or every such case waits 15 s.
    proc = ApiProcess(tmp_path_factory.mktemp("openapi") / "api", "--poll-hold", "0").start()
    try:
        register = f"{proc.url}/api/v1/worker_register?token={CLUSTER_TOKEN}&slots=64"
        with urllib.request.urlopen(register, timeout=10) as resp:
            worker_id = json.loads(resp.read())["worker_id"]
        yield LiveApi(proc.url, worker_id)
        assert "Traceback" not in proc.log(), proc.log()[-3000:]
    finally:
        proc.stop()


def errors_are_json(ctx: Any, response: Any, case: Any) -> None:
    if 400 <= response.status_code < 600:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], response.text[:300]


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case, live_api: LiveApi) -> None:
    query = case.query if isinstance(case.query, dict) else None
    if query is not None:
        # Half the time the real worker and token, so the operations get past authentication.
        if "worker_id" in query and len(str(query["worker_id"])) % 2 == 0:
            query["worker_id"] = live_api.worker_id
        if "token" in query and len(str(query["token"])) % 2 == 0:
            query["token"] = CLUSTER_TOKEN
        if "wait" in query:
            query["wait"] = 0  # a long poll would only make the test slow
    case.call_and_validate(
        base_url=live_api.url,
        headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
        additional_checks=[errors_are_json],
        # The API rightly refuses some schema-valid requests for reasons no schema can state:
        # json_payload that is not JSON text, an env reference that does not resolve, a run
        # started twice, and the seed's 412 for an empty queue.
        excluded_checks=[positive_data_acceptance],
        timeout=30,
    )
