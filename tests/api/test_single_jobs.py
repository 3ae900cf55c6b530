"""Single submissions through the real API: submit, hand out with files, grade, read back,
change, cancel, and the LMS's callback, with a test client playing the grader."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.api.callback_receiver import SECRET, CallbackReceiver
from tests.conftest import MakeApi
from tests.helpers import ApiClient, Response, eventually, stage

JOBS = "/api/v1/job"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def multipart(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body as browsers and curl send it; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")  # fmt: skip
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def create_assignment(api: ApiClient, name: str = "hw1", **fields: Any) -> None:
    body = {"name": name, "pipeline": [stage(entrypoint=["/grade.sh"], env={"LEVEL": "$LEVEL"})],
            "env": {"LEVEL": "1"}, "allowed_params": ["LEVEL"], **fields}  # fmt: skip
    resp = await api.request("POST", "/api/v1/assignments", json_body=body, auth=True)
    assert resp.status == 201, resp.body


async def submit(api: ApiClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return await api.request("POST", JOBS, json_body=body, auth=True, headers=headers)


async def take_job(api: ApiClient) -> tuple[str, dict[str, Any]]:
    """Register a grader (our kind: it names its slots) and claim the next job."""
    worker = await api.register(slots=1)
    resp = await api.poll(worker, wait=5)
    assert resp.status == 200, resp.body
    return worker, resp.json


def graded(response: Any, exit_code: int = 0) -> str:
    """A grader's result whose last stage reported `response`."""
    return json.dumps({"stages": [{"image": "busybox-test", "exit_code": exit_code, "output": "tail"}],
                       "response": response})  # fmt: skip


async def report(api: ApiClient, worker: str, job: dict[str, Any], result: str, **extra: Any) -> Response:
    return await api.report(worker, job["job_id"], result=result, attempt=job["attempt"], **extra)


@pytest.fixture
async def lms_api(make_api: MakeApi) -> ApiClient:
    service = await make_api(callback_secret=SECRET)
    return ApiClient(service.url)


async def test_submit_grade_and_read_back(lms_api: ApiClient) -> None:
    api = lms_api
    await create_assignment(api)
    files = {"main.c": {"content": b64(b"int main(void) { return 0; }")}, "lib/util.h": {"content": b64(b"#x")}}
    created = await submit(api, {"assignment": "hw1", "files": files, "params": {"LEVEL": "3"}, "work_id": "w-7"})
    assert created.status == 201, created.body
    job_id = created.json["id"]
    assert created.json == {"id": job_id, "status": "queued", "work_id": "w-7"}
    assert created.headers["Location"] == f"{JOBS}/{job_id}"

    early = await api.request("GET", f"{JOBS}/{job_id}/output", auth=True)
    assert early.status == 409 and early.json["job_status"] == "queued"

    worker, job = await take_job(api)
    assert job["job_id"] == job_id and job["kind"] == "single"
    assert "LEVEL=3" in job["stages"][0]["env"] and f"GRADING_JOB_ID={job_id}" in job["stages"][0]["env"]
    assert {f["name"]: f["size"] for f in job["files"]} == {"main.c": 28, "lib/util.h": 2}
    for entry in job["files"]:
        got = await api.request("GET", entry["url"], params={"worker_id": worker})
        assert got.status == 200 and got.body == base64.b64decode(files[entry["name"]]["content"])
    stranger = await api.register(slots=1)
    refused = await api.request("GET", job["files"][0]["url"], params={"worker_id": stranger})
    assert refused.status == 404, "only the grader running the job reads the student's files"

    running = (await api.request("GET", f"{JOBS}/{job_id}/status", auth=True)).json
    assert running["status"] == "running" and running["attempts"] == 1 and running["started_at"]
    done = await report(api, worker, job, graded({"success": True, "grade": 8.5, "comments": ["fine"]}), kind="single")
    assert done.status == 200, done.body

    output = (await api.request("GET", f"{JOBS}/{job_id}/output", auth=True)).json
    assert output["grade"] == 8.5 and output["comments"] == ["fine"] and output["work_id"] == "w-7"
    assert output["stages"][0]["exit_code"] == 0
    both = (await api.request("GET", f"{JOBS}/{job_id}", auth=True)).json
    assert both["status"] == "succeeded" and both["output"] == output and both["finished_at"]


async def test_the_2018_grader_reports_a_single_job_without_saying_its_kind(lms_api: ApiClient) -> None:
    api = lms_api
    created = await submit(api, {"image": "course/quiz"})
    worker = await api.register()  # no slots: the 2018 grader
    job = (await api.poll(worker, wait=5)).json
    done = await api.report(worker, job["job_id"], result=graded({"success": False, "error": "wrong answer"}))
    assert done.status == 200, done.body
    status = (await api.request("GET", f"{JOBS}/{created.json['id']}", auth=True)).json
    assert status["status"] == "failed" and status["error"] == "wrong answer" and status["output"] is None


@pytest.mark.parametrize(
    ("result", "success", "status", "error"),
    [
        (graded({"success": True, "grade": "A+"}), True, "failed", "$.grade"),
        (graded({"success": True}), True, "failed", "neither a grade nor comments"),
        (json.dumps({"stages": [{"image": "x", "exit_code": 2}]}), False, "failed", "exited with code 2"),
        (json.dumps({"stages": [{"image": "x", "exit_code": 0}]}), True, "succeeded", None),
    ],
)
async def test_the_grade_comes_from_the_last_stage_or_else_from_exit_codes(
    lms_api: ApiClient, result: str, success: bool, status: str, error: str | None
) -> None:
    api = lms_api
    job_id = (await submit(api, {"image": "course/quiz"})).json["id"]
    worker, job = await take_job(api)
    assert (await report(api, worker, job, result, success=success, kind="single")).status == 200
    body = (await api.request("GET", f"{JOBS}/{job_id}/status", auth=True)).json
    assert body["status"] == status
    if error is None:
        assert body["error"] is None
    else:
        assert error in body["error"]
    output = await api.request("GET", f"{JOBS}/{job_id}/output", auth=True)
    assert output.status == (200 if status == "succeeded" else 404)
    if status == "failed":
        assert "will never exist" in output.json["error"]


async def test_multipart_and_correctomatic_grade_form(lms_api: ApiClient, receiver: CallbackReceiver) -> None:
    api = lms_api
    await create_assignment(api)
    body, content_type = multipart([("assignment", "hw1"), ("work_id", "m-1"), ("param", "LEVEL=2")],
                                   [("file", "main.py", b"print(1)"), ("extra", "data.txt", b"42")])  # fmt: skip
    form = await api.request("POST", JOBS, body=body, headers={"Content-Type": content_type}, auth=True)
    assert form.status == 201, form.body
    url = receiver.script("/grade-cb")
    body, content_type = multipart(
        [("work_id", "123456"), ("assignment_id", "hw1"), ("callback", url), ("param", "LEVEL=9")],
        [("file", "exercise.c", b"int x;")],
    )
    grade = await api.request("POST", "/grade", body=body, headers={"Content-Type": content_type}, auth=True)
    assert grade.status == 200 and grade.json["success"] is True and grade.json["message"], grade.body

    worker, first = await take_job(api)
    assert first["job_id"] == form.json["id"] and first["exercise"] == "main.py"
    assert sorted(f["name"] for f in first["files"]) == ["data.txt", "main.py"]
    assert "LEVEL=2" in first["stages"][0]["env"]
    assert (await report(api, worker, first, graded({"success": True, "grade": 1}), kind="single")).status == 200
    second = (await api.poll(worker, wait=5)).json
    assert second["exercise"] == "exercise.c" and "LEVEL=9" in second["stages"][0]["env"]
    answer = {"success": True, "grade": 7.98, "comments": ["If priests would eat", "pebbles from the riveeeer"]}
    assert (await report(api, worker, second, graded(answer), kind="single")).status == 200

    await eventually(lambda: _async(receiver.at("/grade-cb")), lambda r: len(r) == 1, timeout=10)
    callback = receiver.at("/grade-cb")[0]
    assert callback.signed_ok, "signed with the API's callback secret"
    assert callback.json["success"] is True and callback.json["work_id"] == "123456"
    assert callback.json["grade"] == 7.98 and callback.json["comments"] == answer["comments"]
    assert callback.json["job_id"] == grade.json["job_id"] and callback.json["status"] == "succeeded"
    deliveries = (await api.request("GET", f"{JOBS}/{second['job_id']}/deliveries", auth=True)).json
    assert [a["status_code"] for a in deliveries["attempts"]] == [200]


async def _async(value: Any) -> Any:
    return value


async def test_idempotency_key_gives_the_first_job_and_refuses_another_body(lms_api: ApiClient) -> None:
    api = lms_api
    first = await submit(api, {"image": "course/quiz", "work_id": "a"}, headers={"Idempotency-Key": "k-1"})
    again = await submit(api, {"image": "course/quiz", "work_id": "a"}, headers={"Idempotency-Key": "k-1"})
    assert first.status == 201 and again.status == 200 and again.json["id"] == first.json["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await submit(api, {"image": "course/quiz", "work_id": "b"}, headers={"Idempotency-Key": "k-1"})
    assert other.status == 409 and "Idempotency-Key" in other.json["error"]
    worker, job = await take_job(api)
    assert job["job_id"] == first.json["id"]
    assert (await api.poll(worker, wait=0)).status in (409, 412), "one job, not two"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"assignment": "nope"}, "$.assignment: no assignment named 'nope'"),
        ({"assignment": "hw1", "params": {"OTHER": "1"}}, "$.params.OTHER"),
        ({"assignment": "hw1", "files": {"a": {"content": "%%%"}}}, "$.files.a.content"),
        ({"image": "x", "callback_url": "http://169.254.169.254/latest/meta-data"}, "$.callback_url"),
        ({"image": "x", "callback_url": "ftp://127.0.0.1/x"}, "$.callback_url"),
        ({"image": "x", "priority": 5000}, "$.priority"),
        ({"pipeline": [{"image": "x", "timeout": 999999}]}, "timeout"),
    ],
)
async def test_bad_submissions_are_400_naming_the_field_and_store_nothing(
    lms_api: ApiClient, mongo_url: str, body: dict[str, Any], field: str
) -> None:
    api = lms_api
    await create_assignment(api)
    resp = await submit(api, body)
    assert resp.status == 400, resp.body
    assert field in resp.json["error"], resp.json
    client = AsyncMongoClient(mongo_url)
    try:
        db = client.get_default_database()
        assert await db.jobs.find_one({}) is None
        assert await db.job_files.files.find_one({}) is None
    finally:
        await client.close()


async def test_files_over_the_cap_are_refused(make_api: MakeApi) -> None:
    api = ApiClient((await make_api(max_files_bytes=1 << 20)).url)
    big = {"big.bin": {"content": b64(b"x" * ((1 << 20) + 1))}}
    resp = await submit(api, {"image": "x", "files": big})
    assert resp.status == 400 and "--max-files-mb" in resp.json["error"]


async def test_patch_while_queued_then_409(lms_api: ApiClient) -> None:
    api = lms_api
    await create_assignment(api)
    job_id = (await submit(api, {"assignment": "hw1", "files": {"a.c": {"content": b64(b"old")}}})).json["id"]
    patched = await api.request(
        "PATCH", f"{JOBS}/{job_id}", auth=True,
        json_body={"params": {"LEVEL": "5"}, "files": {"a.c": {"content": b64(b"new!")}}, "priority": 3},
    )  # fmt: skip
    assert patched.status == 200, patched.body
    assert patched.json["priority"] == 3 and patched.json["files"] == [{"name": "a.c", "size": 4}]
    bad = await api.request("PATCH", f"{JOBS}/{job_id}", auth=True, json_body={"assignment": "other"})
    assert bad.status == 400 and "cannot be changed" in bad.json["error"]
    worker, job = await take_job(api)
    assert "LEVEL=5" in job["stages"][0]["env"]
    got = await api.request("GET", job["files"][0]["url"], params={"worker_id": worker})
    assert got.body == b"new!"
    late = await api.request("PATCH", f"{JOBS}/{job_id}", auth=True, json_body={"priority": 1})
    assert late.status == 409 and "running" in late.json["error"]


async def test_priority_orders_the_queue(lms_api: ApiClient) -> None:
    api = lms_api
    low = (await submit(api, {"image": "x", "priority": -5})).json["id"]
    normal = (await submit(api, {"image": "x"})).json["id"]
    high = (await submit(api, {"image": "x", "priority": 10})).json["id"]
    worker = await api.register(slots=3)
    order = [(await api.poll(worker, wait=1)).json["job_id"] for _ in range(3)]
    assert order == [high, normal, low]


async def test_cancel_queued_at_once_and_running_through_the_heartbeat(
    lms_api: ApiClient, receiver: CallbackReceiver
) -> None:
    api = lms_api
    url = receiver.script("/cancelled")
    queued = (await submit(api, {"image": "x", "work_id": "q", "callback_url": url})).json["id"]
    cancelled = await api.request("DELETE", f"{JOBS}/{queued}", auth=True)
    assert cancelled.status == 200 and cancelled.json["status"] == "cancelled"
    await eventually(lambda: _async(receiver.at("/cancelled")), lambda r: len(r) == 1, timeout=10)
    told = receiver.at("/cancelled")[0].json
    assert told["success"] is False and told["status"] == "cancelled" and told["work_id"] == "q"
    assert (await api.request("DELETE", f"{JOBS}/{queued}", auth=True)).status == 409

    running = (await submit(api, {"image": "x"})).json["id"]
    worker, job = await take_job(api)
    assert job["job_id"] == running
    beat = await api.request("POST", "/api/v1/heartbeat", params={"worker_id": worker, "jobs": running})
    assert beat.status == 200 and beat.json.get("abort", []) == []
    assert (await api.request("DELETE", f"{JOBS}/{running}", auth=True)).status == 200
    beat = await api.request("POST", "/api/v1/heartbeat", params={"worker_id": worker, "jobs": running})
    assert beat.json["abort"] == [running], "the grader is told to kill it"
    late = await report(api, worker, job, graded({"success": True, "grade": 1}), kind="single")
    assert late.status == 409
    assert (await api.request("GET", f"{JOBS}/{running}/status", auth=True)).json["status"] == "cancelled"


async def test_single_jobs_need_the_client_token_and_unknown_ids_are_404(lms_api: ApiClient) -> None:
    api = lms_api
    assert (await api.request("POST", JOBS, json_body={"image": "x"})).status == 401
    for path in (f"{JOBS}/{'0' * 24}", f"{JOBS}/{'0' * 24}/status", f"{JOBS}/{'0' * 24}/output", f"{JOBS}/nonsense"):
        resp = await api.request("GET", path, auth=True)
        assert resp.status == 404, (path, resp.status)
    run_job = await api.submit_and_start({"student_pipeline": [stage()], "students": [{}]})
    run_status = await api.status(run_job)
    job_of_run = run_status["student_statuses"][0]["job_id"]
    assert (await api.request("GET", f"{JOBS}/{job_of_run}", auth=True)).status == 404, "a run's job is not one"


async def test_a_grading_run_with_a_callback_url_is_called_once_when_it_ends(
    lms_api: ApiClient, receiver: CallbackReceiver
) -> None:
    api = lms_api
    url = receiver.script("/run-done")
    refused = await api.request(
        "POST", "/api/v1/grading_run", auth=True,
        json_body={"student_pipeline": [stage()], "students": [{}], "callback_url": "http://169.254.169.254/"},
    )  # fmt: skip
    assert refused.status == 400 and "$.callback_url" in refused.json["error"]
    run_id = await api.submit_and_start(
        {"student_pipeline": [stage()], "students": [{"S": "a"}, {"S": "b"}], "callback_url": url}
    )
    worker = await api.register(slots=1)
    await api.work_off(worker)
    await eventually(lambda: _async(receiver.at("/run-done")), lambda r: len(r) == 1, timeout=10)
    told = receiver.at("/run-done")[0]
    assert told.signed_ok
    assert told.json["grading_run_id"] == run_id and told.json["status"] == "succeeded"
    assert told.json["counts"]["succeeded"] == 2 and told.json["n_students"] == 2
