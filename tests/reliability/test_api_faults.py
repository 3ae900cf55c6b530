"""The API SIGKILLed at random points of a run's life and restarted: nothing lost or duplicated,
graders reconnect by themselves."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from pymongo import AsyncMongoClient

from tests.grader.conftest import StartGrader, finished_run, stages_of
from tests.helpers import ApiClient, run_config, stage
from tests.processes import ApiProcess

API_ARGS = ("--heartbeat-interval", "1", "--worker-timeout", "3")


async def restart(proc: ApiProcess, mongo_url: str) -> ApiProcess:
    await asyncio.to_thread(proc.kill)
    again = ApiProcess(proc.data_dir, "--mongo-url", mongo_url, *API_ARGS, port=proc.port)
    await asyncio.to_thread(again.start)
    return again


async def runs_are_whole(mongo_url: str) -> dict[str, int]:
    """Every stored run has all of its student jobs: a submission cut short leaves no partial run."""
    client: AsyncMongoClient = AsyncMongoClient(mongo_url)
    try:
        db = client.get_default_database()
        sizes = {}
        async for run in db.runs.find():
            jobs = await db.jobs.count_documents({"run_id": str(run["_id"]), "kind": "student"})
            assert jobs == run["n_students"], (run, jobs)
            sizes[str(run["_id"])] = jobs
        return sizes
    finally:
        await client.close()


async def test_api_killed_during_submission_start_claims_and_reports(
    tmp_path: Path, mongo_url: str, start_grader: StartGrader, busybox_image: str
) -> None:
    rng = random.Random(42)
    proc = ApiProcess(tmp_path / "api", "--mongo-url", mongo_url, *API_ARGS)
    await asyncio.to_thread(proc.start)
    try:
        api = ApiClient(proc.url)
        # During a submission: the run is stored whole or not at all.
        big = asyncio.create_task(api.submit(run_config(students=3000)))
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        proc = await restart(proc, mongo_url)
        try:
            submitted = [await big]
        except (ConnectionError, AssertionError):
            submitted = []
        sizes = await runs_are_whole(mongo_url)
        # An answered submission was stored; an unanswered one at most once (its client cannot know).
        assert set(submitted) <= set(sizes) and len(sizes) <= 1

        graders = [start_grader(proc.url, "--slots", "2") for _ in range(2)]
        script = 'sleep 0.4; echo "result $N"'
        config = {
            "student_pipeline": [stage(busybox_image, entrypoint=["sh", "-c", script], env={"N": ""})],
            "students": [{"N": str(i)} for i in range(16)],
        }
        run_id = await api.submit(config)
        # During start: the run is either still `created` (start again) or started whole.
        starting = asyncio.create_task(api.start(run_id))
        await asyncio.sleep(rng.uniform(0.0, 0.02))
        proc = await restart(proc, mongo_url)
        await asyncio.gather(starting, return_exceptions=True)
        if (await api.status(run_id))["status"] == "created":
            assert (await api.start(run_id)).status == 200

        # During claims and reports: three more kills while the graders work.
        for _ in range(3):
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            proc = await restart(proc, mongo_url)

        status = await finished_run(api, run_id, timeout=120)
        assert status["status"] == "succeeded"
        for job in status["student_statuses"]:
            assert job["status"] == "succeeded", job
            assert stages_of(job)[0]["output"].strip() == f"result {job['student']['N']}"
            assert job["attempts"] <= 2, "a claim lost with the API is retried once, not more"
        assert all(grader.running for grader in graders), "graders ride out API restarts"
        assert all("Traceback" not in grader.log() for grader in graders)
        assert len(await runs_are_whole(mongo_url)) == len(sizes) + 1, "no run duplicated"
    finally:
        await asyncio.to_thread(proc.stop)
