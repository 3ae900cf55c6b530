"""start_run as course staff use it: clear errors for every bad input, the final report, exit codes."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import pytest

from broadway.server import ApiService
from tests.e2e.conftest import EXAMPLE, start_run, write
from tests.grader.conftest import StartGrader
from tests.helpers import CLIENT_TOKEN, ApiClient, eventually, run_config
from tests.processes import ROOT, child_env


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("start_run: ")
    return lines[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ("{not json", "is not valid JSON"),
        ('{"students": []}', "student_pipeline"),
        ('{"student_pipeline": [{"image": "x", "colour": 1}], "students": []}', "$.student_pipeline[0]"),
        ('{"student_pipeline": [{"image": "x", "env": {"A": "$NOPE"}}], "students": [{}]}', "NOPE"),
    ],
    ids=["missing-file", "bad-json", "no-pipeline", "unknown-key", "unresolvable-env"],
)
async def test_bad_pipeline_files_are_reported_before_anything_is_sent(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "pipeline.json"
    if content is not None:
        write(path, content)
    # The API URL points nowhere: a file problem must be found before any request.
    done = await start_run(str(path))
    assert done.code == 2
    assert expected in one_line_error(done.err)


async def test_unreachable_api_wrong_token_and_unknown_run(api_service: ApiService) -> None:
    unreachable = await start_run(str(EXAMPLE), api_url="http://127.0.0.1:9")
    assert unreachable.code == 2 and "cannot reach the Broadway API" in one_line_error(unreachable.err)
    refused = await start_run(str(EXAMPLE), api_url=api_service.url, token="wrong")
    assert refused.code == 2 and "401" in one_line_error(refused.err) and "wrong" not in refused.err
    missing = await start_run(str(EXAMPLE), api_url=api_service.url, token=None)
    assert missing.code == 2 and "BROADWAY_CLIENT_TOKEN" in one_line_error(missing.err)
    unknown = await start_run("--watch", "0" * 24, api_url=api_service.url)
    assert unknown.code == 2 and "404" in one_line_error(unknown.err)
    nothing = await start_run(api_url=api_service.url)
    assert nothing.code == 2 and "--watch" in one_line_error(nothing.err)


async def test_no_start_and_no_wait(api_service: ApiService, api: ApiClient) -> None:
    submitted = await start_run(str(EXAMPLE), "--no-start", api_url=api_service.url)
    started = await start_run(str(EXAMPLE), "--no-wait", "--json", api_url=api_service.url)
    assert submitted.code == 0 and started.code == 0
    assert (await api.status(submitted.out.strip()))["status"] == "created"
    assert (await api.status(json.loads(started.out)["id"]))["status"] == "running"


async def test_final_report_and_exit_code_follow_the_students(
    api_service: ApiService, start_grader: StartGrader, busybox_image: str, tmp_path: Path
) -> None:
    start_grader(api_service.url)
    config = {
        "student_pipeline": [{"image": busybox_image, "env": {"SCORE": ""},
                              "entrypoint": ["sh", "-c", 'echo "score $SCORE"; test $SCORE = 10']}],
        "students": [{"NETID": "ann", "SCORE": "10"}, {"NETID": "ben", "SCORE": "7"}],
    }  # fmt: skip
    pipeline = write(tmp_path / "p.json", json.dumps(config))
    mixed = await start_run(str(pipeline), "--interval", "0.1", api_url=api_service.url)
    assert mixed.code == 1, mixed.err
    ann = next(line for line in mixed.out.splitlines() if "NETID=ann" in line)
    ben = next(line for line in mixed.out.splitlines() if "NETID=ben" in line)
    assert "succeeded" in ann and "score 10" in ann
    assert "failed" in ben and "stage 1 exited 1" in ben
    assert "students done" in mixed.err, "progress is shown on stderr"

    config["students"] = [{"NETID": "ann", "SCORE": "10"}]
    write(pipeline, json.dumps(config))
    passing = await start_run(str(pipeline), "--json", "--interval", "0.1", api_url=api_service.url)
    assert passing.code == 0
    report = json.loads(passing.out)
    assert report["status"] == "succeeded"
    assert [(j["student"], j["status"], j["summary"]) for j in report["jobs"]] == [
        ("NETID=ann SCORE=10", "succeeded", "score 10")
    ]


async def test_ctrl_c_stops_watching_and_says_how_to_resume(api_service: ApiService, api: ApiClient) -> None:
    run_id = await api.submit_and_start({"student_pipeline": [{"image": "nobody-runs-this"}], "students": [{}]})
    env = child_env(BROADWAY_API_URL=api_service.url, BROADWAY_CLIENT_TOKEN=CLIENT_TOKEN)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "utils.start_run", "--watch", run_id, "--interval", "0.1",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    # Wait until it is watching (its first progress line), then interrupt it.
    assert proc.stderr is not None
    first = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert b"students done" in first
    proc.send_signal(signal.SIGINT)
    _, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    err = err_bytes.decode()
    assert proc.returncode == 130
    assert f"python -m utils.start_run --watch {run_id}" in err and "Traceback" not in err
    assert (await api.status(run_id))["status"] == "running", "interrupting start_run does not cancel the run"
    # The run goes on: its job is still handed out, and the run finishes once it is reported.
    worker = await api.register()
    job = await api.poll(worker, wait=5)
    assert job.status == 200, job.body
    assert (await api.report(worker, job.json["job_id"])).status == 200
    await eventually(lambda: api.status(run_id), lambda s: s["status"] == "succeeded")


async def test_watching_reads_the_summary_and_the_results_once_at_the_end(
    api_service: ApiService, api: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Polling the whole run every second cost the API seconds per poll at 100,000 students:
    start_run watches the summary and reads every job only when the run has ended."""
    caplog.set_level(logging.INFO, logger="broadway.access")
    run_id = await api.submit_and_start(run_config(students=3))
    env = child_env(BROADWAY_API_URL=api_service.url, BROADWAY_CLIENT_TOKEN=CLIENT_TOKEN)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "utils.start_run", "--watch", run_id, "--interval", "0.1", "--json",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip

    def status_gets() -> list[str]:
        return [r.getMessage() for r in caplog.records if f"GET /api/v1/grading_run/{run_id}" in r.getMessage()]

    async def logged_gets() -> list[str]:
        return status_gets()

    await eventually(logged_gets, lambda gets: len(gets) >= 2, timeout=30)  # it is watching
    worker = await api.register()
    for _ in range(3):
        job = await api.poll(worker, wait=5)
        assert job.status == 200, job.body
        assert (await api.report(worker, job.json["job_id"])).status == 200
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert [j["status"] for j in json.loads(out)["jobs"]] == ["succeeded"] * 3
    gets = status_gets()
    watching = [g for g in gets if "summary=1" in g]
    reading = [g for g in gets if "summary=1" not in g]
    assert len(watching) >= 3, gets
    assert len(reading) == 1 and "offset=0" in reading[0], f"the jobs are read once, at the end: {gets}"
    assert gets[-1] == reading[0]
