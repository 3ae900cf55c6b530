"""--log-format json: one JSON object a line, ids where known, no secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from broadway.logs import JsonFormatter, configure_logging, log_context
from tests.helpers import CLIENT_TOKEN, CLUSTER_TOKEN, ApiClient, run_config


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged during the test, in the JSON format, at DEBUG."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def test_api_logs_one_json_object_a_line_with_ids_and_no_secrets(api: ApiClient, json_log: io.StringIO) -> None:
    run_id = await api.submit_and_start(run_config(students=1))
    worker = await api.register(name="json-grader")
    job = (await api.poll(worker, wait=0)).json
    assert (await api.report(worker, job["job_id"], result="done")).status == 200
    await api.heartbeat(worker)
    # Credentials in a query string and a header, on requests that fail and so log at WARNING.
    await api.request("GET", "/api/v1/worker_register", params={"token": CLUSTER_TOKEN + "x"})
    await api.request("GET", f"/api/v1/grading_run/{run_id}", headers={"Authorization": f"Bearer {CLIENT_TOKEN}x"})
    await api.request("GET", "/api/v1/grading_job", params={"worker_id": worker + "x", "wait": 0})

    records = lines(json_log)
    assert records, "nothing was logged"
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert "worker_id" not in record
    text = json_log.getvalue()
    for secret in (CLUSTER_TOKEN, CLIENT_TOKEN, worker):
        assert secret not in text, f"a secret is in the log: {secret[:12]}..."
    access = [r for r in records if r["logger"] == "broadway.access"]
    report = [r for r in access if r.get("job_id") == job["job_id"]]
    assert report and report[0]["http"] == {
        "method": "POST", "route": "/api/v1/grading_job/{job_id}", "status": 200, "ms": report[0]["http"]["ms"]
    }  # fmt: skip
    assert any(r.get("run_id") == run_id and r["http"]["status"] == 200 for r in access)
    assert any("token=[redacted]" in r["message"] for r in access)


def test_context_fields_exceptions_and_credential_fields(json_log: io.StringIO) -> None:
    log = logging.getLogger("broadway.test")
    with log_context(job_id="j1", worker="grader-7"):
        log.info("claimed", extra={"worker_id": "secret-worker-id", "run_id": "r1"})
    try:
        raise RuntimeError("GET /api/v1/heartbeat?worker_id=secret-worker-id failed; Bearer abc.def")
    except RuntimeError:
        log.exception("request failed")
    first, second = lines(json_log)
    assert first["job_id"] == "j1" and first["run_id"] == "r1" and first["worker"] == "grader-7"
    assert first["level"] == "INFO" and first["logger"] == "broadway.test" and first["message"] == "claimed"
    assert "job_id" not in second  # the context ended with the block
    assert "secret-worker-id" not in json_log.getvalue() and "abc.def" not in json_log.getvalue()
    assert "worker_id=[redacted]" in second["exception"]


def test_configure_logging_json_and_text() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        stream = io.StringIO()
        configure_logging("INFO", "json", stream)
        logging.getLogger("broadway.x").info("hello %s", "there")
        logging.getLogger("broadway.x").debug("not shown")
        assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["hello there"]
        stream = io.StringIO()
        configure_logging("INFO", "text", stream)
        logging.getLogger("broadway.x").warning("plain")
        assert stream.getvalue().rstrip().endswith("WARNING broadway.x: plain")
        with pytest.raises(ValueError, match="json"):
            configure_logging("INFO", "xml")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
