"""Single submissions through a real API, a real grader process and real Docker: the files at
/job/files and /tmp/exercise, the grade from stdout or /job/result.json, cancels that kill the
container, and the LMS's signed callback."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import docker
import pytest

from tests.api.callback_receiver import SECRET, CallbackReceiver
from tests.api.test_single_jobs import multipart
from tests.conftest import MakeApi
from tests.docker_fixtures import broadway_containers
from tests.grader.conftest import StartGrader
from tests.helpers import ApiClient, eventually, stage

JOBS = "/api/v1/job"
HEARTBEAT_S = 1.0
RESPONSE = '{"success": true, "grade": 9, "comments": ["ok"]}'


def sh(image: str, script: str) -> dict[str, Any]:
    return stage(image, entrypoint=["sh", "-c", script])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
async def lms(make_api: MakeApi) -> ApiClient:
    service = await make_api(callback_secret=SECRET, heartbeat_interval=HEARTBEAT_S)
    return ApiClient(service.url)


async def submit(api: ApiClient, body: dict[str, Any]) -> str:
    created = await api.request("POST", JOBS, json_body=body, auth=True)
    assert created.status == 201, created.body
    return str(created.json["id"])


async def submit_form(api: ApiClient, pipeline: list[dict[str, Any]], files: list[tuple[str, str, bytes]]) -> str:
    body, content_type = multipart([("pipeline", json.dumps(pipeline))], files)
    created = await api.request("POST", JOBS, body=body, headers={"Content-Type": content_type}, auth=True)
    assert created.status == 201, created.body
    return str(created.json["id"])


async def ended(api: ApiClient, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """GET /api/v1/job/{id} once the job has ended."""

    async def probe() -> dict[str, Any]:
        return dict((await api.request("GET", f"{JOBS}/{job_id}", auth=True)).json)

    return await eventually(probe, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout, 0.1)


async def containers(client: docker.DockerClient) -> list[str]:
    return await asyncio.to_thread(broadway_containers, client)


async def test_stage_sees_files_and_exercise_and_its_stdout_is_the_grade(
    lms: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    write_exercise = "(echo x > /tmp/exercise) 2>/dev/null && echo writable"
    script = f"cat /tmp/exercise; echo; ls /job/files; {write_exercise}; echo '{RESPONSE}'"
    files = [("file", "main.c", b"int main(void) { return 42; }"), ("extra", "data.txt", b"42")]
    job_id = await submit_form(lms, [sh(busybox_image, script)], files)
    grader = start_grader(lms.base_url)
    job = await ended(lms, job_id)
    assert job["status"] == "succeeded", (job, grader.log()[-3000:])
    output = job["output"]
    assert output["grade"] == 9 and output["comments"] == ["ok"]
    seen = output["stages"][0]["output"].splitlines()
    assert seen[0] == "int main(void) { return 42; }", "the submitted file is at /tmp/exercise"
    assert seen[1:3] == ["data.txt", "main.c"], "every file is in /job/files"
    assert "writable" not in seen, "/tmp/exercise is read-only"


async def test_files_in_directories_and_the_last_stages_stdout_alone(
    lms: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    # The grade is the last stage's stdout alone: stderr and earlier stages do not spoil it.
    first = sh(busybox_image, "cat /job/files/lib/util.h; echo noise >&2; echo not json")
    last = sh(busybox_image, f"echo warn >&2; echo '{RESPONSE}'; echo trailing >&2")
    job_id = await submit(lms, {"pipeline": [first, last], "files": {"lib/util.h": {"content": b64(b"#define X")}}})
    start_grader(lms.base_url)
    job = await ended(lms, job_id)
    assert job["status"] == "succeeded", job
    assert job["output"]["grade"] == 9
    # The stage saw the file (stdout and stderr interleave in any order in the captured output).
    assert "#define X" in job["output"]["stages"][0]["output"]


async def test_result_json_is_the_grade_and_an_invalid_one_fails_the_job(
    lms: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    to_file = """echo '{"success": true, "grade": 7, "comments": ["file"]}' > /job/result.json"""
    written = await submit(lms, {"pipeline": [sh(busybox_image, f"{to_file}; echo '{RESPONSE}'")]})
    invalid = await submit(
        lms, {"pipeline": [sh(busybox_image, f"echo '[1, 2]' > /job/result.json; echo '{RESPONSE}'")]}
    )
    broken = await submit(lms, {"pipeline": [sh(busybox_image, "echo '{\"success\": tru' > /job/result.json")]})
    linked = await submit(lms, {"pipeline": [sh(busybox_image, "ln -s /etc/hostname /job/result.json")]})
    start_grader(lms.base_url)
    job = await ended(lms, written)
    assert job["status"] == "succeeded" and job["output"]["grade"] == 7, "result.json wins over stdout"
    for job_id, words in ((invalid, "not a JSON object"), (broken, "not valid JSON"), (linked, "symlink")):
        job = await ended(lms, job_id)
        assert job["status"] == "failed", job
        assert "result.json" in job["error"] and words in job["error"], job["error"]


async def cancelled_within(
    api: ApiClient, client: docker.DockerClient, cancel: tuple[str, str], expected: int
) -> float:
    """Seconds from the cancel request to the last of the job's containers being gone."""
    await eventually(lambda: containers(client), lambda ids: len(ids) == expected, timeout=30)
    method, path = cancel
    started = time.monotonic()
    answer = await api.request(method, path, auth=True)
    assert answer.status == 200, answer.body
    await eventually(lambda: containers(client), lambda ids: ids == [], timeout=30, interval=0.02)
    return time.monotonic() - started


async def test_cancel_kills_the_running_stage(
    lms: ApiClient,
    start_grader: StartGrader,
    busybox_image: str,
    docker_client: docker.DockerClient,
    receiver: CallbackReceiver,
) -> None:
    url = receiver.script("/cancelled")
    job_id = await submit(
        lms,
        {"pipeline": [sh(busybox_image, "sleep 600"), sh(busybox_image, "echo never")], "callback_url": url},
    )
    grader = start_grader(lms.base_url)
    seconds = await cancelled_within(lms, docker_client, ("DELETE", f"{JOBS}/{job_id}"), expected=1)
    assert seconds < 2 * HEARTBEAT_S, f"the container lived {seconds:.2f}s after the cancel"
    job = await ended(lms, job_id)
    assert job["status"] == "cancelled"
    await eventually(lambda: _now(receiver.at("/cancelled")), lambda r: len(r) == 1)
    told = receiver.at("/cancelled")[0]
    assert told.signed_ok and told.json["status"] == "cancelled" and told.json["success"] is False
    await eventually(lambda: _now(grader.log()), lambda log: f"job {job_id} was cancelled" in log)
    log = grader.log()
    assert f"job {job_id} succeeded" not in log and f"job {job_id} failed" not in log, "not reported"
    assert "never" not in log, "no further stage ran"
    assert await containers(docker_client) == []


async def test_run_cancel_kills_its_running_containers(
    lms: ApiClient, start_grader: StartGrader, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    config = {
        "student_pipeline": [sh(busybox_image, "sleep 600")],
        "students": [{"STUDENT_ID": "a"}, {"STUDENT_ID": "b"}],
    }
    run_id = await lms.submit_and_start(config)
    start_grader(lms.base_url, "--slots", "2")
    seconds = await cancelled_within(lms, docker_client, ("POST", f"/api/v1/grading_run/{run_id}/cancel"), expected=2)
    assert seconds < 2 * HEARTBEAT_S, f"the containers lived {seconds:.2f}s after the cancel"
    status = await lms.status(run_id)
    assert [s["status"] for s in status["student_statuses"]] == ["cancelled", "cancelled"]


async def test_the_grade_reaches_the_callback_signed(
    lms: ApiClient, start_grader: StartGrader, busybox_image: str, receiver: CallbackReceiver
) -> None:
    url = receiver.script("/graded")
    job_id = await submit(
        lms, {"pipeline": [sh(busybox_image, f"echo '{RESPONSE}'")], "callback_url": url, "work_id": "w-1"}
    )
    start_grader(lms.base_url)
    await eventually(lambda: _now(receiver.at("/graded")), lambda r: len(r) == 1, timeout=60)
    callback = receiver.at("/graded")[0]
    assert callback.signed_ok, "signed with the API's callback secret"
    body = callback.json
    assert body["success"] is True and body["grade"] == 9 and body["comments"] == ["ok"]
    assert body["work_id"] == "w-1" and body["job_id"] == job_id and body["status"] == "succeeded"


async def _now(value: Any) -> Any:
    return value
