"""In steady state a grader spends one request per job: each report asks for the next job."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from broadway.server import ApiService
from tests.grader.conftest import StartGrader, finished_run
from tests.helpers import ApiClient, stage


async def test_a_busy_grader_takes_its_next_job_from_each_report(
    api_service: ApiService,
    api: ApiClient,
    start_grader: StartGrader,
    busybox_image: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="broadway.access")
    run_id = await api.submit({"student_pipeline": [stage(busybox_image, entrypoint=["true"])], "students": [{}] * 8})
    start_grader(api_service.url)  # one slot
    await api.start(run_id)
    status = await finished_run(api, run_id, timeout=90)
    assert Counter(s["status"] for s in status["student_statuses"]) == {"succeeded": 8}
    assert all(s["attempts"] == 1 for s in status["student_statuses"]), "nothing ran twice"
    requests = [r.getMessage() for r in caplog.records if r.name == "broadway.access"]
    handed = [line for line in requests if line.startswith("200 GET /api/v1/grading_job?")]
    reports = [line for line in requests if line.startswith("200 POST /api/v1/grading_job/")]
    assert len(reports) == 8 and all("next=1" in line for line in reports), reports
    # The first job comes from a poll; the other seven ride on the reports before them.
    assert len(handed) == 1, handed
