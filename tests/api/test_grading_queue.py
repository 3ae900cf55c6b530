"""Orca's grading queue over the API: a fake LMS on loopback PUTs GradingJobConfigs and receives
GradingJobResults; a fake builder (a grader started with --build, over HTTP) ends image builds."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.api.callback_receiver import SECRET, CallbackReceiver
from tests.api.courses_helpers import course_client
from tests.api.test_grader_images import claim_build, report, request_build, upload
from tests.conftest import MakeApi
from tests.helpers import ApiClient, eventually

QUEUE = "/api/v1/grading_queue"


def dockerfile(n: int = 0) -> str:
    return f"FROM broadway-test-busybox:latest\nRUN echo {n} > /n\n"


def sha_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def grading_job(sha: str, response_url: str, key: str = "sub-1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": key,
        "collation": {"type": "user", "id": "alice"},
        "metadata_table": {"course": "cs101"},
        "files": {"submission": {"url": "http://127.0.0.1:9/s.zip", "mime_type": "application/zip",
                                 "should_replace_paths": False}},
        "priority": 0,
        "script": [{"cmd": ["make", "test"], "on_complete": "output", "on_fail": "abort"}],
        "response_url": response_url,
        "grader_image_sha": sha,
    }  # fmt: skip
    return body | fields


async def put(api: ApiClient, body: Any, immediate: bool = False, **kwargs: Any) -> Any:
    path = QUEUE + ("/immediate" if immediate else "")
    return await api.request("PUT", path, json_body=body, headers={"x-api-key": api.client_token}, **kwargs)


async def built(api: ApiClient, text: str, succeed: bool = True) -> str:
    """Request a build of `text` and end it through a fake builder; its sha."""
    await request_build(api, {"dockerfile_contents": text, "dockerfile_sha_sum": sha_of(text)})
    await end_build(api, succeed)
    return sha_of(text)


async def end_build(api: ApiClient, succeed: bool = True) -> None:
    builder = await api.register(slots=1, build="true")
    build = await claim_build(api, builder)
    if succeed:
        assert (await upload(api, builder, build, b"an image archive")).status == 200
        assert (await report(api, builder, build, True)).status == 200
    else:
        assert (await report(api, builder, build, False, error="step 2: RUN exited 1")).status == 200


async def callbacks_at(receiver: CallbackReceiver, path: str, n: int = 1) -> list[Any]:
    async def seen() -> list[Any]:
        return receiver.at(path)

    return await eventually(seen, lambda got: len(got) >= n, timeout=10)


async def lms_api(make_api: MakeApi) -> ApiClient:
    service = await make_api(callback_secret=SECRET)
    return ApiClient(service.url)


async def test_a_job_runs_and_its_result_is_posted_to_the_lms(make_api: MakeApi, receiver: CallbackReceiver) -> None:
    api = await lms_api(make_api)
    sha = await built(api, dockerfile())
    url = receiver.script("/lms/result")
    resp = await put(api, grading_job(sha, url))
    assert resp.status == 200, resp.body
    assert resp.json["message"] == "OK" and resp.json["status"]["status"] == "queued"
    worker = await api.register(slots=1)
    job = (await api.poll(worker)).json
    (stage,) = job["stages"]
    assert stage["image"] == f"broadway-image:{sha}"
    assert stage["orca"]["script"] == [{"cmd": ["make", "test"], "on_complete": "output", "on_fail": "abort"}]
    assert stage["orca"]["files"]["submission"]["mime_type"] == "application/zip"
    shell = [{"cmd": ["make", "test"], "stdout": "5/5 passed", "stderr": "", "status_code": 0, "timed_out": False}]
    result = {"stages": [], "orca_result": {"output": "5/5 passed", "shell_responses": shell, "errors": []}}
    done = await api.report(worker, job["job_id"], result=json.dumps(result), attempt=job["attempt"], success=True)
    assert done.status == 200, done.body
    (got,) = await callbacks_at(receiver, "/lms/result")
    assert got.signed_ok
    assert got.json == {"key": "sub-1", "output": "5/5 passed", "shell_responses": shell, "errors": []}
    status = await api.request("GET", f"{QUEUE}/{resp.json['status']['id']}/status", auth=True)
    assert status.json["status"] == "succeeded"


async def test_a_script_that_aborts_fails_and_the_lms_gets_its_errors(
    make_api: MakeApi, receiver: CallbackReceiver
) -> None:
    api = await lms_api(make_api)
    sha = await built(api, dockerfile())
    resp = await put(api, grading_job(sha, receiver.script("/lms/abort")))
    worker = await api.register(slots=1)
    job = (await api.poll(worker)).json
    shell = [{"cmd": ["make", "test"], "stdout": "", "stderr": "no rule", "status_code": 2, "timed_out": False}]
    result = {"stages": [], "orca_result": {"shell_responses": shell, "errors": ["make test failed: aborted"]}}
    await api.report(worker, job["job_id"], result=json.dumps(result), attempt=job["attempt"], success=False)
    (got,) = await callbacks_at(receiver, "/lms/abort")
    assert got.json["key"] == "sub-1" and "output" not in got.json
    assert got.json["errors"] == ["make test failed: aborted"] and got.json["shell_responses"] == shell
    status = await api.request("GET", f"{QUEUE}/{resp.json['status']['id']}/status", auth=True)
    assert status.json["status"] == "failed" and "aborted" in status.json["error"]


async def test_bad_configs_and_unknown_images_get_orca_errors_and_store_nothing(api: ApiClient) -> None:
    sha = await built(api, dockerfile())
    url = "http://127.0.0.1:9/lms"
    cases = [
        ({"key": "k"}, "collation"),
        (grading_job(sha, url, script=[{"cmd": "a", "on_complete": 0}]), "cycle"),
        (grading_job(sha, url, script=[{"cmd": "a", "on_fail": "nowhere"}]), "nowhere"),
        (grading_job(sha_of("never requested"), url), "grader_image_sha"),
        (grading_job(sha, "http://169.254.169.254/latest"), "response_url"),
        ([1, 2], "object"),
    ]
    for body, named in cases:
        resp = await put(api, body)
        assert resp.status == 400, (body, resp.body)
        assert isinstance(resp.json["errors"], list) and any(named in e for e in resp.json["errors"]), resp.body
    worker = await api.register(slots=1)
    assert (await api.poll(worker)).status == 412, "a refused config left a job behind"


async def test_a_job_waits_in_the_holding_pen_until_its_image_is_built(api: ApiClient) -> None:
    text = dockerfile(1)
    await request_build(api, {"dockerfile_contents": text, "dockerfile_sha_sum": sha_of(text)})
    resp = await put(api, grading_job(sha_of(text), "http://127.0.0.1:9/lms"))
    assert resp.status == 200, resp.body
    job_id = resp.json["status"]["id"]
    assert resp.json["status"]["status"] == "held"
    pen = await api.request("GET", f"/api/v1/holding_pen/{job_id}/status", auth=True)
    assert pen.json["in_holding_pen"] and pen.json["grader_image_sha"] == sha_of(text), pen.body
    worker = await api.register(slots=1)
    assert (await api.poll(worker)).status == 412, "a held job was handed out before its image existed"
    await end_build(api)
    job = (await api.poll(worker)).json
    assert job["job_id"] == job_id
    pen = await api.request("GET", f"/api/v1/holding_pen/{job_id}/status", auth=True)
    assert not pen.json["in_holding_pen"]


async def test_a_failed_build_fails_every_held_job_and_tells_each_lms(
    make_api: MakeApi, receiver: CallbackReceiver
) -> None:
    api = await lms_api(make_api)
    text = dockerfile(2)
    await request_build(api, {"dockerfile_contents": text, "dockerfile_sha_sum": sha_of(text)})
    ids = []
    for n in range(2):
        resp = await put(api, grading_job(sha_of(text), receiver.script(f"/lms/held{n}"), key=f"k{n}"))
        ids.append(resp.json["status"]["id"])
    await end_build(api, succeed=False)
    for n, job_id in enumerate(ids):
        (got,) = await callbacks_at(receiver, f"/lms/held{n}")
        assert got.json["key"] == f"k{n}" and got.json["shell_responses"] == []
        assert "could not be built" in got.json["errors"][0] and "RUN exited 1" in got.json["errors"][0]
        status = await api.request("GET", f"{QUEUE}/{job_id}/status", auth=True)
        assert status.json["status"] == "failed"
    # And a failed image is refused from then on, as one never built is.
    resp = await put(api, grading_job(sha_of(text), receiver.script("/lms/late")))
    assert resp.status == 400 and "failed" in resp.json["errors"][0]


async def test_the_same_key_updates_the_job_until_it_runs(api: ApiClient) -> None:
    sha = await built(api, dockerfile())
    url = "http://127.0.0.1:9/lms"
    first = await put(api, grading_job(sha, url))
    again = await put(api, grading_job(sha, url, script=[{"cmd": "make check", "on_complete": "output"}]))
    assert again.json["status"]["id"] == first.json["status"]["id"] and again.json["updated"]
    other_url = await put(api, grading_job(sha, url + "/other"))
    assert other_url.json["status"]["id"] != first.json["status"]["id"], "another response_url is another job"
    worker = await api.register(slots=3)
    job = (await api.poll(worker)).json
    assert job["job_id"] == first.json["status"]["id"]
    assert job["stages"][0]["orca"]["script"] == [{"cmd": "make check", "on_complete": "output"}]
    # Once it runs, the same key is a new job.
    later = await put(api, grading_job(sha, url))
    assert later.json["status"]["id"] not in (first.json["status"]["id"], other_url.json["status"]["id"])
    assert not later.json["updated"]


async def test_delete_removes_the_job_and_tells_the_lms(make_api: MakeApi, receiver: CallbackReceiver) -> None:
    api = await lms_api(make_api)
    sha = await built(api, dockerfile())
    resp = await put(api, grading_job(sha, receiver.script("/lms/deleted")))
    job_id = resp.json["status"]["id"]
    gone = await api.request("DELETE", f"{QUEUE}/{job_id}", headers={"x-api-key": api.client_token})
    assert gone.status == 200 and gone.json["status"]["status"] == "cancelled", gone.body
    (got,) = await callbacks_at(receiver, "/lms/deleted")
    assert got.json == {"key": "sub-1", "shell_responses": [], "errors": ["cancelled by a client"]}
    worker = await api.register(slots=1)
    assert (await api.poll(worker)).status == 412
    again = await api.request("DELETE", f"{QUEUE}/{job_id}", auth=True)
    assert again.status == 409 and again.json["errors"], again.body


async def test_priority_delays_the_release_and_immediate_does_not(make_api: MakeApi) -> None:
    api = ApiClient((await make_api(orca_release_interval=0.05)).url)
    sha = await built(api, dockerfile())
    url = "http://127.0.0.1:9/lms"
    delayed = await put(api, grading_job(sha, url, key="later", priority=400))
    assert delayed.json["status"]["status"] == "waiting" and delayed.json["status"]["release_at"]
    now = await put(api, grading_job(sha, url, key="now", priority=60_000), immediate=True)
    assert now.json["status"]["status"] == "queued"
    worker = await api.register(slots=2)
    assert (await api.poll(worker)).json["job_id"] == now.json["status"]["id"]
    assert (await api.poll(worker)).status == 412, "released before its delay"
    resp = await api.poll(worker, wait=5)
    assert resp.status == 200 and resp.json["job_id"] == delayed.json["status"]["id"], resp.body


async def test_one_users_jobs_do_not_crowd_out_anothers(api: ApiClient) -> None:
    sha = await built(api, dockerfile())
    url = "http://127.0.0.1:9/lms"
    ids = {}
    for n in range(3):
        resp = await put(api, grading_job(sha, url, key=f"alice-{n}"))
        ids[resp.json["status"]["id"]] = f"alice-{n}"
    bob = grading_job(sha, url, key="bob-0", collation={"type": "user", "id": "bob"})
    ids[(await put(api, bob)).json["status"]["id"]] = "bob-0"
    worker = await api.register(slots=4)
    order = [ids[(await api.poll(worker)).json["job_id"]] for _ in range(4)]
    assert order == ["alice-0", "bob-0", "alice-1", "alice-2"], order


async def test_another_courses_jobs_are_not_found(api: ApiClient) -> None:
    sha = await built(api, dockerfile())
    mine = await course_client(api, "orca-mine")
    theirs = await course_client(api, "orca-theirs")
    resp = await put(mine, grading_job(sha, "http://127.0.0.1:9/lms"))
    assert resp.status == 200, resp.body
    job_id = resp.json["status"]["id"]
    for method, path in (("GET", f"{QUEUE}/{job_id}/status"), ("GET", f"/api/v1/holding_pen/{job_id}/status"),
                         ("DELETE", f"{QUEUE}/{job_id}")):  # fmt: skip
        foreign = await theirs.request(method, path, headers={"x-api-key": theirs.client_token})
        assert foreign.status == 404 and foreign.json["errors"], (method, path, foreign.body)
    nobody = await api.request("GET", f"{QUEUE}/{job_id}/status", headers={"x-api-key": "wrong"})
    assert nobody.status == 401
    assert (await mine.request("GET", f"{QUEUE}/{job_id}/status", auth=True)).status == 200


async def test_a_builds_response_url_hears_how_it_ended(make_api: MakeApi, receiver: CallbackReceiver) -> None:
    api = await lms_api(make_api)
    good, bad = dockerfile(7), dockerfile(8)
    for text, path in ((good, "/lms/built"), (bad, "/lms/broken")):
        body = {"dockerfile_contents": text, "dockerfile_sha_sum": sha_of(text), "response_url": receiver.script(path)}
        await request_build(api, body)
    await end_build(api)
    await end_build(api, succeed=False)
    (built_cb,) = await callbacks_at(receiver, "/lms/built")
    (broken_cb,) = await callbacks_at(receiver, "/lms/broken")
    assert built_cb.signed_ok and broken_cb.signed_ok
    assert built_cb.json["dockerfile_sha_sum"] == sha_of(good) and built_cb.json["was_successful"] is True
    assert broken_cb.json["was_successful"] is False and "RUN exited 1" in broken_cb.json["server_exception"]
