"""Fixtures for grader tests: a real API, real graders as child processes, real Docker."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.docker_fixtures import broadway_containers, busybox_image, docker_client  # noqa: F401 - fixtures
from tests.helpers import ApiClient, eventually
from tests.processes import GraderProcess

StartGrader = Callable[..., GraderProcess]


@pytest.fixture
def start_grader(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[StartGrader]:  # noqa: F811
    """Factory: start `python -m grader` against an API; every grader is stopped, and no
    container may be left behind, when the test ends."""
    started: list[GraderProcess] = []

    def factory(api_url: str, *args: str) -> GraderProcess:
        grader = GraderProcess(api_url, tmp_path / f"grader{len(started)}", *args, name=f"grader{len(started)}")
        started.append(grader)
        return grader.start()

    yield factory
    for grader in started:
        grader.stop()
    leftover = [docker_client.containers.get(c) for c in broadway_containers(docker_client)]
    details = [(c.short_id, c.status, c.labels) for c in leftover]
    assert not leftover, f"a grader left containers behind: {details}\n" + "\n".join(g.log()[-4000:] for g in started)
    for grader in started:
        leftovers = list((grader.work_dir / "jobs").glob("*")) if (grader.work_dir / "jobs").exists() else []
        assert leftovers == [], f"job directories left behind: {leftovers}"


async def finished_run(api: ApiClient, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The run's status once it has ended."""
    return await eventually(
        lambda: api.status(run_id),
        lambda s: s["status"] in ("succeeded", "failed", "cancelled"),
        timeout=timeout,
        interval=0.1,
    )


def stages_of(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-stage results a grader reported for a job."""
    assert job["result"], f"job {job['job_id']} has no result: {job}"
    return list(json.loads(job["result"])["stages"])


Finished = Callable[[ApiClient, str], Awaitable[dict[str, Any]]]
