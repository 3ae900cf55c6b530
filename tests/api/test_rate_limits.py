"""A course's token bucket on submissions: over it, 429 JSON with Retry-After and nothing
stored; after Retry-After it submits again; two API processes take from one bucket."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from tests.api.courses_helpers import course_client
from tests.helpers import ApiClient, run_config
from tests.processes import ApiProcess

JOB = "/api/v1/job"


def inline_job() -> dict[str, object]:
    return {"pipeline": [{"image": "busybox-test", "entrypoint": ["true"]}], "files": {"main.c": {"content": "aW50"}}}


async def count_jobs(mongo_url: str) -> int:
    client: AsyncMongoClient = AsyncMongoClient(mongo_url)
    try:
        rows = await (await client.get_default_database().jobs.aggregate([{"$count": "n"}])).to_list()
    finally:
        await client.close()
    return int(rows[0]["n"]) if rows else 0


async def test_over_the_rate_429_with_retry_after_then_success(api: ApiClient, mongo_url: str) -> None:
    course = await course_client(api, "cs241", rate={"per_second": 1, "burst": 2})
    for _ in range(2):
        assert (await course.request("POST", JOB, json_body=inline_job(), auth=True)).status == 201
    stored = await count_jobs(mongo_url)
    refused = await course.request("POST", JOB, json_body=inline_job(), auth=True)
    assert refused.status == 429
    assert "cs241" in refused.json["error"] and refused.json["status"] == 429
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 2
    runs = await course.request("POST", "/api/v1/grading_run", json_body={"json_payload": "{}"}, auth=True)
    assert runs.status == 429, "runs take from the same bucket"
    assert await count_jobs(mongo_url) == stored, "nothing stored for a refused submission"

    await asyncio.sleep(retry_after)  # the behaviour under test is the wait itself
    assert (await course.request("POST", JOB, json_body=inline_job(), auth=True)).status == 201


async def test_courses_have_their_own_buckets_and_the_admin_none(api: ApiClient) -> None:
    slow = await course_client(api, "slow", rate={"per_second": 0.01, "burst": 1})
    other = await course_client(api, "other")
    assert (await slow.request("POST", JOB, json_body=inline_job(), auth=True)).status == 201
    assert (await slow.request("POST", JOB, json_body=inline_job(), auth=True)).status == 429
    for _ in range(5):
        assert (await other.request("POST", JOB, json_body=inline_job(), auth=True)).status == 201
        assert (await api.request("POST", JOB, json_body=inline_job(), auth=True)).status == 201
    # A new rate starts with a full bucket.
    changed = await api.request("PATCH", "/api/v1/courses/slow", json_body={"rate": {"per_second": 0.01, "burst": 2}},
                                auth=True)  # fmt: skip
    assert changed.status == 200
    assert (await slow.request("POST", JOB, json_body=inline_job(), auth=True)).status == 201


@pytest.fixture
def two_apis(tmp_path: Path, mongo_url: str) -> Iterator[list[ApiProcess]]:
    procs = [ApiProcess(tmp_path / f"api{i}", "--mongo-url", mongo_url) for i in range(2)]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def test_two_api_processes_share_one_bucket(two_apis: list[ApiProcess]) -> None:
    first, second = (ApiClient(p.url) for p in two_apis)
    course = await course_client(first, "shared", rate={"per_second": 0.01, "burst": 4})
    via = [ApiClient(p.url, client_token=course.client_token) for p in two_apis]
    statuses = []
    for i in range(6):
        resp = await via[i % 2].request("POST", "/api/v1/grading_run", json_body=run_config(students=1), auth=True)
        statuses.append(resp.status)
    assert statuses == [200, 200, 200, 200, 429, 429], "4 in all, across both processes"
    assert second.base_url != first.base_url
