"""A stage's own `memory` and `timeout` are checked at submission: positive, readable, and within
the API's --max-stage-timeout / --max-stage-memory. Nothing of a refused run is stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broadway.server import ApiService
from tests.conftest import MakeApi
from tests.helpers import ApiClient, stage
from utils.start_run import UsageError, load_pipeline

RUNS = "/api/v1/grading_run"


def one_stage(**fields: Any) -> dict[str, Any]:
    return {"student_pipeline": [stage(entrypoint=["true"], **fields)], "students": [{"S": "1"}]}


async def submit(api: ApiClient, payload: str) -> tuple[int, str]:
    resp = await api.request("POST", RUNS, json_body={"json_payload": payload}, auth=True)
    return resp.status, str(resp.json.get("error", "")) if resp.status != 200 else ""


async def assert_nothing_stored(service: ApiService) -> None:
    assert await service.store.db.runs.count_documents({}) == 0
    assert await service.store.db.jobs.count_documents({}) == 0


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # "0" passed the schema and reached Docker as memory 0, which Docker reads as "no limit".
        ({"memory": "0"}, "$.student_pipeline[0].memory: must be positive"),
        ({"memory": "0m"}, "$.student_pipeline[0].memory: must be positive"),
        ({"memory": 0}, "$.student_pipeline[0].memory"),
        ({"memory": "1k"}, '$.student_pipeline[0].memory: "1k" is below Docker\'s minimum of 6m'),
        ({"memory": "lots"}, "$.student_pipeline[0].memory"),
        ({"timeout": 0}, "$.student_pipeline[0].timeout"),
        ({"timeout": -5}, "$.student_pipeline[0].timeout"),
        ({"timeout": "10"}, "$.student_pipeline[0].timeout"),
    ],
)
async def test_non_positive_or_unreadable_limit_is_400_naming_the_stage(
    api: ApiClient, api_service: ApiService, fields: dict[str, Any], expected: str
) -> None:
    status, error = await submit(api, json.dumps(one_stage(**fields)))
    assert status == 400 and expected in error, error
    await assert_nothing_stored(api_service)


async def test_nan_timeout_is_refused(api: ApiClient, api_service: ApiService) -> None:
    # Python's JSON parser reads NaN, and NaN slips past the schema's bounds (every comparison is false).
    payload = '{"student_pipeline": [{"image": "a", "timeout": NaN}], "students": [{}]}'
    status, error = await submit(api, payload)
    assert status == 400 and "$.student_pipeline[0].timeout: must be a positive number" in error, error
    await assert_nothing_stored(api_service)


async def test_the_place_names_the_pipeline_and_the_stage(api: ApiClient) -> None:
    config = {
        "preprocessing_pipeline": [stage(entrypoint=["true"])],
        "student_pipeline": [stage(entrypoint=["true"])],
        "students": [{}],
        "postprocessing_pipeline": [stage(entrypoint=["true"]), stage(entrypoint=["true"], memory="0g")],
    }
    status, error = await submit(api, json.dumps(config))
    assert status == 400 and "$.postprocessing_pipeline[1].memory: must be positive" in error, error


async def test_limits_above_the_api_ceilings_are_400_and_at_them_accepted(make_api: MakeApi) -> None:
    service = await make_api(max_stage_timeout=60.0, max_stage_memory_bytes=256 << 20)
    api = ApiClient(service.url)
    status, error = await submit(api, json.dumps(one_stage(timeout=61)))
    assert status == 400 and "$.student_pipeline[0].timeout: 61 s is above" in error and "--max-stage-timeout" in error
    status, error = await submit(api, json.dumps(one_stage(memory="257m")))
    assert status == 400 and "$.student_pipeline[0].memory:" in error and "256m" in error, error
    assert "--max-stage-memory" in error
    status, error = await submit(api, json.dumps(one_stage(memory=1 << 30)))
    assert status == 400 and "above this API's ceiling" in error, error
    await assert_nothing_stored(service)
    status, error = await submit(api, json.dumps(one_stage(timeout=60, memory="256m")))
    assert status == 200, error
    status, error = await submit(api, json.dumps(one_stage(timeout=0.5, memory="6m")))
    assert status == 200, error


async def test_default_ceilings_refuse_a_day_long_stage(api: ApiClient) -> None:
    status, error = await submit(api, json.dumps(one_stage(timeout=7200)))
    assert status == 400 and "3600 s" in error, error
    status, error = await submit(api, json.dumps(one_stage(memory="17g")))
    assert status == 400 and "16g" in error, error


def test_start_run_refuses_the_same_limits_locally(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(one_stage(memory="0")))
    with pytest.raises(UsageError, match=r"\$\.student_pipeline\[0\]\.memory: must be positive"):
        load_pipeline(path)
