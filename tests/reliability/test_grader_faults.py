"""Graders SIGKILLed mid-job, over and over: every job still ends exactly once."""

from __future__ import annotations

import asyncio
import datetime
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker

from broadway.server import ApiService
from grader.__main__ import instance_id
from grader.executor import LABEL
from tests.docker_fixtures import inspected_containers
from tests.grader.conftest import StartGrader, finished_run, stages_of
from tests.helpers import ApiClient, eventually, stage
from tests.processes import ApiProcess, GraderProcess


def running_jobs(client: docker.DockerClient) -> dict[str, str]:
    """job id -> grader instance, for every stage container running now."""
    containers = inspected_containers(client, label=LABEL, status="running")
    return {c.labels["broadway.job"]: c.labels[LABEL] for c in containers}


def current_attempts(client: docker.DockerClient, status: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """job id -> (grader instance, attempt number as the API counts it), for each job whose one
    running container is its current attempt's.

    A killed grader's container runs on until the restarted grader removes it, so Docker alone
    can show an attempt that is already over: a job counts only while it is `running` in the API
    and its single running container was created after that attempt's claim.
    """
    containers = inspected_containers(client, label=LABEL, status="running")
    by_job: dict[str, list[Any]] = {}
    for container in containers:
        by_job.setdefault(container.labels["broadway.job"], []).append(container)
    current = {}
    for job in status["student_statuses"]:
        mine = by_job.get(job["job_id"], [])
        if job["status"] != "running" or len(mine) != 1 or job["started_at"] is None:
            continue
        if docker_time(mine[0].attrs["Created"]) > job["started_at"]:
            current[job["job_id"]] = (mine[0].labels[LABEL], job["attempts"])
    return current


def docker_time(text: str) -> float:
    """Seconds since the epoch from Docker's RFC 3339 time with nanoseconds."""
    seconds, _, fraction = text.rstrip("Z").partition(".")
    whole = datetime.datetime.fromisoformat(seconds).replace(tzinfo=datetime.UTC).timestamp()
    return whole + float(f"0.{fraction or 0}")


async def test_twenty_grader_kills_over_a_40_job_run(
    tmp_path: Path, start_grader: StartGrader, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    api_proc = ApiProcess(tmp_path / "api", "--heartbeat-interval", "1", "--worker-timeout", "2", "--max-attempts", "3")
    await asyncio.to_thread(api_proc.start)
    try:
        api = ApiClient(api_proc.url)
        graders: dict[str, GraderProcess] = {}
        for _ in range(3):
            grader = start_grader(api_proc.url)
            graders[instance_id(grader.work_dir)] = grader
        students = [{"N": str(i), "SLEEP": "1"} for i in range(40)]
        students[0]["SLEEP"] = "6"  # long enough to be caught running on each of its attempts
        script = 'sleep "$SLEEP"; echo "result $N"'
        run_id = await api.submit_and_start(
            {
                "student_pipeline": [stage(busybox_image, entrypoint=["sh", "-c", script], env={"N": "", "SLEEP": ""})],
                "students": students,
            }
        )
        doomed = (await api.status(run_id))["student_statuses"][0]["job_id"]

        rng = random.Random(20261125)
        kills: Counter[str] = Counter()
        killed: set[tuple[str, int]] = set()  # (job, attempt): each attempt is killed at most once
        deadline = time.monotonic() + 150
        while (sum(kills.values()) < 20 or kills[doomed] < 3) and time.monotonic() < deadline:
            status = await api.status(run_id)
            running = {
                job: where
                for job, where in (await asyncio.to_thread(current_attempts, docker_client, status)).items()
                if (job, where[1]) not in killed
            }
            if kills[doomed] < 3 and doomed in running:
                target = doomed
            else:
                # Other jobs are killed at most twice, so that only the doomed one runs out of attempts.
                candidates = [job for job in running if job != doomed and kills[job] < 2]
                if not candidates or sum(kills.values()) >= 20:
                    await asyncio.sleep(0.1)
                    continue
                target = rng.choice(candidates)
            instance, attempt = running[target]
            victim = graders[instance]
            await asyncio.to_thread(victim.kill)
            victim.start()  # as systemd would; it removes the container it orphaned
            kills[target] += 1
            killed.add((target, attempt))
            await asyncio.sleep(rng.uniform(0.2, 0.6))
        assert sum(kills.values()) >= 20 and kills[doomed] == 3, kills

        status = await finished_run(api, run_id, timeout=150)
        assert status["status"] == "succeeded", "a job that ran out of attempts does not fail the run"
        jobs = {job["job_id"]: job for job in status["student_statuses"]}
        lost = jobs.pop(doomed)
        assert lost["status"] == "failed" and lost["attempts"] == 3
        assert lost["error"].startswith("infrastructure: gave up after 3 attempts")
        for job in jobs.values():
            assert job["status"] == "succeeded", job
            assert stages_of(job)[0]["output"].strip() == f"result {job['student']['N']}", "its own, single result"
            assert 1 <= job["attempts"] <= 1 + kills[job["job_id"]], (job["attempts"], kills[job["job_id"]])
        assert sum(job["attempts"] for job in jobs.values()) > len(jobs), "killed attempts are counted"
    finally:
        await asyncio.to_thread(api_proc.stop)


async def test_silent_worker_late_report_is_refused_and_does_not_replace_the_result(
    api_service: ApiService,
    api: ApiClient,
    start_grader: StartGrader,
    busybox_image: str,
    docker_client: docker.DockerClient,
) -> None:
    first = start_grader(api_service.url)
    # A container's host name is its own id: each attempt's output says which container ran it.
    run_id = await api.submit_and_start(
        {"student_pipeline": [stage(busybox_image, entrypoint=["sh", "-c", "sleep 3; hostname"])], "students": [{}]}
    )
    mine = instance_id(first.work_dir)
    running = await eventually(
        lambda: asyncio.to_thread(running_jobs, docker_client), lambda jobs: mine in jobs.values(), timeout=30
    )
    first_container = inspected_containers(docker_client, label=f"{LABEL}={mine}")[0].id[:12]
    assert list(running) == [(await api.status(run_id))["student_statuses"][0]["job_id"]]

    first.signal(signal.SIGSTOP)  # heartbeats stop; its container runs on
    start_grader(api_service.url)
    status = await finished_run(api, run_id, timeout=60)
    first.signal(signal.SIGCONT)  # now it reports the first attempt, late
    await eventually(lambda: asyncio.to_thread(first.log), lambda log: "dropped: HTTP 409" in log, timeout=30)

    job = (await api.status(run_id))["student_statuses"][0]
    assert job["attempts"] == 2 and job["status"] == "succeeded"
    assert job["result"] == status["student_statuses"][0]["result"], "the late report changed nothing"
    assert stages_of(job)[0]["output"].strip() != first_container, "the result is the second attempt's"
