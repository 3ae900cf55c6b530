"""A grader's life around its jobs: API restarts, stops, being declared dead, sharing a run."""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path

import docker

from broadway.server import ApiService
from tests.docker_fixtures import broadway_containers
from tests.grader.conftest import StartGrader, finished_run, stages_of
from tests.helpers import ApiClient, eventually, stage
from tests.processes import ApiProcess, GraderProcess

RUNNING = re.compile(r"job ([0-9a-f]{24}): running")


def sleeper(image: str, seconds: float, students: int = 1) -> dict[str, object]:
    return {
        "student_pipeline": [stage(image, entrypoint=["sh", "-c", f"echo start; sleep {seconds}; echo done"])],
        "students": [{"STUDENT_ID": f"s{i}"} for i in range(students)],
    }


async def job_running(api: ApiClient, run_id: str) -> dict[str, object]:
    status = await eventually(lambda: api.status(run_id), lambda s: s["counts"]["running"] > 0, timeout=30)
    return status


async def wait_exit(grader: GraderProcess, timeout: float) -> int:
    return await asyncio.to_thread(grader.wait, timeout)


async def test_api_restarted_mid_job(tmp_path: Path, start_grader: StartGrader, busybox_image: str) -> None:
    first = ApiProcess(tmp_path / "api")
    await asyncio.to_thread(first.start)
    second = ApiProcess(tmp_path / "api", port=first.port)
    try:
        api = ApiClient(first.url)
        grader = start_grader(first.url)
        run_id = await api.submit_and_start(sleeper(busybox_image, 3, students=2))
        await job_running(api, run_id)
        await asyncio.to_thread(first.kill)
        await asyncio.sleep(1.5)  # the grader meets a dead API while its job runs
        await asyncio.to_thread(second.start)
        status = await finished_run(api, run_id, timeout=60)
        assert [s["status"] for s in status["student_statuses"]] == ["succeeded", "succeeded"], grader.log()
        assert all(s["attempts"] == 1 for s in status["student_statuses"]), "no job was run twice"
        assert grader.running and "Traceback" not in grader.log()
    finally:
        await asyncio.to_thread(first.stop)
        await asyncio.to_thread(second.stop)


async def test_warm_stop_finishes_and_reports_the_running_job(
    api_service: ApiService,
    api: ApiClient,
    start_grader: StartGrader,
    busybox_image: str,
    docker_client: docker.DockerClient,
) -> None:
    grader = start_grader(api_service.url)
    run_id = await api.submit_and_start(sleeper(busybox_image, 2, students=2))
    # Its container exists: the job has reached the grader (a claim still on the wire when the
    # stop comes is left to the reaper, like any job of a grader that goes away).
    await eventually(lambda: asyncio.to_thread(broadway_containers, docker_client), lambda ids: len(ids) == 1)
    grader.signal(signal.SIGTERM)
    assert await wait_exit(grader, 30) == 0
    status = await api.status(run_id)
    statuses = sorted(s["status"] for s in status["student_statuses"])
    assert statuses == ["queued", "succeeded"], "the running job was finished; no new one was taken"
    done = next(s for s in status["student_statuses"] if s["status"] == "succeeded")
    assert stages_of(done)[0]["output"].split() == ["start", "done"]


async def test_cold_stop_kills_containers_and_the_job_is_requeued(
    api_service: ApiService,
    api: ApiClient,
    start_grader: StartGrader,
    busybox_image: str,
    docker_client: docker.DockerClient,
) -> None:
    grader = start_grader(api_service.url)
    run_id = await api.submit_and_start(sleeper(busybox_image, 600))
    await job_running(api, run_id)
    await eventually(lambda: asyncio.to_thread(broadway_containers, docker_client), lambda ids: len(ids) == 1)
    grader.signal(signal.SIGTERM)
    # Two signals pending at once are delivered lowest number first (SIGINT before SIGTERM), so
    # the second is sent only once the first has been taken as the warm stop.
    await eventually(lambda: asyncio.to_thread(grader.log), lambda text: "finishing running jobs" in text)
    grader.signal(signal.SIGINT)
    assert await wait_exit(grader, 20) == 128 + signal.SIGINT
    assert broadway_containers(docker_client) == []
    # No heartbeats any more: the reaper hands the job back to the queue (worker_timeout is 3 s here).
    status = await eventually(lambda: api.status(run_id), lambda s: s["counts"]["queued"] == 1, timeout=10)
    assert status["student_statuses"][0]["attempts"] == 1


async def test_declared_dead_grader_comes_back_and_its_result_stands_if_nobody_took_the_job(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    grader = start_grader(api_service.url)
    run_id = await api.submit_and_start(sleeper(busybox_image, 2))
    await job_running(api, run_id)
    # Frozen past the worker timeout (3 s here) while its container runs on: the API declares it dead.
    grader.signal(signal.SIGSTOP)
    await eventually(lambda: api.status(run_id), lambda s: s["counts"]["queued"] == 1, timeout=10)
    grader.signal(signal.SIGCONT)
    status = await finished_run(api, run_id, timeout=60)
    job = status["student_statuses"][0]
    # The job was requeued but no grader claimed it again: the finished work is kept, not redone.
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert stages_of(job)[0]["output"].split() == ["start", "done"]
    assert "dropped: HTTP 409" not in grader.log() and grader.running


async def test_declared_dead_graders_late_result_is_refused_once_another_grader_took_the_job(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    frozen = start_grader(api_service.url)
    run_id = await api.submit_and_start(sleeper(busybox_image, 2))
    await job_running(api, run_id)
    frozen.signal(signal.SIGSTOP)
    await eventually(lambda: api.status(run_id), lambda s: s["counts"]["queued"] == 1, timeout=10)
    other = start_grader(api_service.url)
    await eventually(
        lambda: api.status(run_id),
        lambda s: s["counts"]["running"] == 1 and s["student_statuses"][0]["attempts"] == 2,
        timeout=30,
    )
    frozen.signal(signal.SIGCONT)  # its container has finished meanwhile; it reports at once
    await eventually(lambda: asyncio.to_thread(frozen.log), lambda log: "dropped: HTTP 409" in log, timeout=30)
    status = await finished_run(api, run_id, timeout=60)
    job = status["student_statuses"][0]
    assert job["status"] == "succeeded" and job["attempts"] == 2, "the second grader's run counts"
    assert RUNNING.findall(other.log()) == [job["job_id"]]
    assert frozen.running and other.running


async def test_two_graders_share_a_run_without_running_a_job_twice(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    graders = [start_grader(api_service.url, "--slots", "2") for _ in range(2)]
    run_id = await api.submit_and_start(
        {
            "student_pipeline": [stage(busybox_image, entrypoint=["sh", "-c", "sleep 0.3; echo ran $GRADING_JOB_ID"])],
            "students": [{"STUDENT_ID": f"s{i}"} for i in range(12)],
        }
    )
    status = await finished_run(api, run_id, timeout=90)
    assert Counter(s["status"] for s in status["student_statuses"]) == {"succeeded": 12}
    assert all(s["attempts"] == 1 for s in status["student_statuses"])
    per_grader = [RUNNING.findall(g.log()) for g in graders]
    ran = Counter(job_id for started in per_grader for job_id in started)
    jobs = {s["job_id"] for s in status["student_statuses"]}
    assert set(ran) == jobs and set(ran.values()) == {1}, "each job ran exactly once across both graders"
    assert all(per_grader), "both graders took part"
