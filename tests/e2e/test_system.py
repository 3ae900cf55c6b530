"""The whole system through its real processes: API CLI, grader CLI, start_run CLI, Docker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from tests.docker_fixtures import broadway_containers
from tests.e2e.conftest import EXAMPLE, start_run
from tests.grader.conftest import StartGrader, finished_run, stages_of
from tests.helpers import ApiClient, eventually, stage
from tests.processes import ApiProcess


@pytest.fixture
async def api_process(tmp_path: Path) -> AsyncIterator[ApiProcess]:
    proc = ApiProcess(tmp_path / "api", "--heartbeat-interval", "1", "--worker-timeout", "3")
    await asyncio.to_thread(proc.start)
    yield proc
    await asyncio.to_thread(proc.stop)


async def test_example_run_completes_with_the_expected_statuses(
    api_process: ApiProcess, start_grader: StartGrader, example_image: str
) -> None:
    start_grader(api_process.url, "--slots", "2")
    done = await start_run(str(EXAMPLE), "--json", "--interval", "0.2", api_url=api_process.url)
    assert done.code == 1, "dave's build fails, so not every job succeeded"
    report = json.loads(done.out)
    statuses = {job["student"]: job["status"] for job in report["jobs"]}
    assert statuses == {
        "STUDENT_ID=alice": "succeeded", "STUDENT_ID=bob": "succeeded", "STUDENT_ID=carol": "succeeded",
        "STUDENT_ID=dave": "failed", "STUDENT_ID=erin": "succeeded", "(post-processing)": "succeeded",
    }  # fmt: skip
    summaries = {job["student"]: job["summary"] for job in report["jobs"]}
    assert summaries["STUDENT_ID=carol"] == "score: 1/3"
    assert "does not parse" in summaries["STUDENT_ID=dave"]

    status = await ApiClient(api_process.url).status(report["id"])
    summary = stages_of(status["postprocessing_status"])[0]["output"]
    assert "students: 5, graded: 4, failed to grade: 1" in summary, "post-processing saw every student's result"
    assert "3 student(s) with score: 3/3" in summary and "1 student(s) with score: 1/3" in summary
    built = stages_of(status["student_statuses"][0])[0]["output"]
    assert "built add for alice" in built, "run env expanded through $ASSIGNMENT into the container"


async def test_grader_killed_mid_job_the_job_is_finished_by_another_once(
    api_process: ApiProcess, start_grader: StartGrader, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    api = ApiClient(api_process.url)
    first = start_grader(api_process.url)
    run_id = await api.submit_and_start(
        {"student_pipeline": [stage(busybox_image, entrypoint=["sh", "-c", "sleep 2; echo graded"])], "students": [{}]}
    )
    # Claimed is not enough: wait for its container, so that the kill orphans one.
    await eventually(
        lambda: asyncio.to_thread(broadway_containers, docker_client), lambda ids: len(ids) == 1, timeout=30
    )
    await asyncio.to_thread(first.kill)  # SIGKILL: no warm stop, its container is orphaned
    start_grader(api_process.url)
    status = await finished_run(api, run_id, timeout=60)
    (job,) = status["student_statuses"]
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert stages_of(job)[0]["output"].strip() == "graded", "one result, from the second grader"
    # Restarted on its work dir (as systemd would), the killed grader removes what it left behind;
    # the fixture then checks that no container or job directory remains.
    first.start()
    await eventually(lambda: asyncio.to_thread(first.log), lambda log: "left by an earlier run" in log, timeout=30)


async def test_api_killed_mid_run_and_restarted_loses_nothing(
    tmp_path: Path, api_process: ApiProcess, start_grader: StartGrader, busybox_image: str
) -> None:
    api = ApiClient(api_process.url)
    start_grader(api_process.url, "--slots", "2")
    students = [{"N": str(i)} for i in range(8)]
    script = "sleep 0.5; echo result-$N"
    run_id = await api.submit_and_start(
        {
            "student_pipeline": [stage(busybox_image, entrypoint=["sh", "-c", script], env={"N": ""})],
            "students": students,
        }
    )
    await eventually(lambda: api.status(run_id), lambda s: s["counts"]["succeeded"] >= 2, timeout=60)
    await asyncio.to_thread(api_process.kill)
    await asyncio.sleep(1)
    restarted = ApiProcess(api_process.data_dir, "--heartbeat-interval", "1", "--worker-timeout", "3",
                           port=api_process.port)  # fmt: skip
    try:
        await asyncio.to_thread(restarted.start)
        status = await finished_run(api, run_id, timeout=90)
    finally:
        await asyncio.to_thread(restarted.stop)
    assert status["status"] == "succeeded"
    outputs = sorted(stages_of(job)[0]["output"].strip() for job in status["student_statuses"])
    assert outputs == sorted(f"result-{i}" for i in range(8)), "every student has exactly their own result"
    assert all(job["status"] == "succeeded" for job in status["student_statuses"])
