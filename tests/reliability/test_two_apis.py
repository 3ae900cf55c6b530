"""Two API processes on one store, four graders, 500 jobs: each job runs exactly once."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

from tests.grader.conftest import StartGrader, finished_run
from tests.helpers import ApiClient, stage
from tests.processes import ApiProcess

RUNNING = re.compile(r"job ([0-9a-f]{24}): running")


async def test_two_apis_four_graders_500_jobs_each_run_once(
    tmp_path: Path, mongo_url: str, start_grader: StartGrader, busybox_image: str
) -> None:
    apis = [ApiProcess(tmp_path / name, "--mongo-url", mongo_url) for name in ("a", "b")]
    for proc in apis:
        await asyncio.to_thread(proc.start)
    try:
        graders = [start_grader(apis[i % 2].url, "--log-level", "INFO") for i in range(4)]
        client = ApiClient(apis[0].url)
        run_id = await client.submit_and_start(
            {"student_pipeline": [stage(busybox_image, entrypoint=["true"])], "students": [{}] * 500}
        )
        status = await finished_run(ApiClient(apis[1].url), run_id, timeout=600)
        jobs = {job["job_id"] for job in status["student_statuses"]}
        assert Counter(job["status"] for job in status["student_statuses"]) == {"succeeded": 500}
        assert {job["attempts"] for job in status["student_statuses"]} == {1}
        ran = Counter(job_id for grader in graders for job_id in RUNNING.findall(grader.log()))
        assert set(ran) == jobs and max(ran.values()) == 1, "no job was run twice"
        per_api = [sum(1 for g in graders[i::2] for _ in RUNNING.findall(g.log())) for i in range(2)]
        assert all(per_api), f"both APIs handed out jobs: {per_api}"
    finally:
        for proc in apis:
            await asyncio.to_thread(proc.stop)
