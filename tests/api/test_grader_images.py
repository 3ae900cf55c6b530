"""Grader image builds over the API: requests, the builder's claim, upload and report, downloads."""

from __future__ import annotations

import gzip
import hashlib
import os
from typing import Any

from broadway.server import ApiService
from tests.api.courses_helpers import create_course, issue_token
from tests.conftest import MakeApi
from tests.helpers import CLIENT_TOKEN, ApiClient, eventually, heartbeating

DOCKERFILE = "FROM broadway-test-busybox:latest\nRUN echo built > /built\n"
SHA = hashlib.sha256(DOCKERFILE.encode()).hexdigest()


def build_request(contents: str = DOCKERFILE, **fields: Any) -> dict[str, Any]:
    return {
        "dockerfile_contents": contents,
        "dockerfile_sha_sum": hashlib.sha256(contents.encode()).hexdigest(),
    } | fields


async def request_build(api: ApiClient, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = await api.request("POST", "/api/v1/grader_images", json_body=body or build_request(), auth=True)
    assert resp.status == 200, resp.body
    return dict(resp.json)


async def status(api: ApiClient, sha: str = SHA) -> dict[str, Any]:
    resp = await api.request("GET", f"/api/v1/grader_images/status/{sha}", auth=True)
    assert resp.status == 200, resp.body
    return dict(resp.json)


async def claim_build(api: ApiClient, worker_id: str) -> dict[str, Any]:
    resp = await api.poll(worker_id)
    assert resp.status == 200, resp.body
    assert resp.json["kind"] == "image_build", resp.json
    return dict(resp.json)


async def upload(api: ApiClient, worker_id: str, build: dict[str, Any], data: bytes) -> Any:
    params = {"worker_id": worker_id, "attempt": build["attempt"]}
    return await api.request("POST", build["build"]["archive_url"], params=params, body=data,
                             headers={"Content-Type": "application/octet-stream"})  # fmt: skip


async def report(api: ApiClient, worker_id: str, build: dict[str, Any], success: bool, error: str | None = None) -> Any:
    body = {"worker_id": worker_id, "attempt": build["attempt"], "success": success}
    if error is not None:
        body["error"] = error
    return await api.request("POST", build["build"]["result_url"], json_body=body)


async def test_bad_requests_get_orca_errors(api: ApiClient) -> None:
    cases = [
        ({"dockerfile_contents": DOCKERFILE, "dockerfile_sha_sum": "0" * 64}, "not the sha256"),
        ({"dockerfile_contents": DOCKERFILE, "dockerfile_sha_sum": "xyz"}, "64 hex digits"),
        ({"dockerfile_sha_sum": SHA}, "dockerfile_contents"),
        (build_request(response_url=5), "response_url"),
        ([1, 2], "JSON object"),
    ]
    for body, named in cases:
        resp = await api.request("POST", "/api/v1/grader_images", json_body=body, auth=True)
        assert resp.status == 400, (body, resp.body)
        assert any(named in e for e in resp.json["errors"]), resp.json
    unknown = await api.request("GET", f"/api/v1/grader_images/status/{'0' * 64}", auth=True)
    assert unknown.status == 404
    nobody = await api.request("POST", "/api/v1/grader_images", json_body=build_request())
    assert nobody.status == 401


async def test_orca_clients_authenticate_with_x_api_key(api_service: ApiService) -> None:
    admin = ApiClient(api_service.url)
    await create_course(admin, "orca-course")
    course_token = await issue_token(admin, "orca-course")
    for token, contents in ((CLIENT_TOKEN, DOCKERFILE), (course_token, DOCKERFILE + "# course\n")):
        body = build_request(contents)
        resp = await admin.request("POST", "/api/v1/grader_images", json_body=body, headers={"x-api-key": token})
        assert resp.status == 200, resp.body
        assert resp.json["message"] == "OK" and resp.json["status"]["status"] == "queued"
    wrong = await admin.request("POST", "/api/v1/grader_images", json_body=build_request(),
                                headers={"x-api-key": "bwc_nope_nope"})  # fmt: skip
    assert wrong.status == 401


async def test_a_build_is_claimed_by_a_builder_uploaded_reported_and_served(api: ApiClient) -> None:
    first = await request_build(api)
    assert first["status"]["status"] == "queued"
    again = await request_build(api)
    assert again["status"]["status"] == "queued"  # the same build, not a second one
    plain = await api.register(slots=1)
    assert (await api.poll(plain)).status == 412  # only builders are handed builds
    builder = await api.register(slots=1, build="true")
    build = await claim_build(api, builder)
    assert build["build"]["sha"] == SHA and build["build"]["dockerfile_contents"] == DOCKERFILE
    assert (await status(api))["status"] == "building"
    assert (await request_build(api))["status"]["status"] == "building"
    # A success with nothing uploaded is refused; so is another worker's upload.
    assert (await report(api, builder, build, True)).status == 409
    assert (await upload(api, plain, build, b"x")).status == 409
    archive = gzip.compress(b"not really a docker save" * 5000)
    stored = await upload(api, builder, build, archive)
    assert stored.status == 200, stored.body
    assert stored.json["size"] == len(archive)
    done = await report(api, builder, build, True)
    assert done.status == 200, done.body
    assert (await status(api))["status"] == "succeeded"
    built = await request_build(api)
    assert built["status"]["status"] == "succeeded" and "no build needed" in built["message"]
    assert (await api.poll(builder)).status == 412  # nothing to build again
    got = await api.request("GET", f"/api/v1/images/{SHA}.tgz", params={"worker_id": plain})
    assert got.status == 200 and got.body == archive
    assert int(got.headers["Content-Length"]) == len(archive)


async def test_downloads_need_a_registered_grader_and_a_built_image(api: ApiClient) -> None:
    worker = await api.register(slots=1)
    assert (await api.request("GET", f"/api/v1/images/{SHA}.tgz")).status == 401
    unknown = await api.request("GET", f"/api/v1/images/{SHA}.tgz", params={"worker_id": "no-such-worker"})
    assert unknown.status == 404
    missing = await api.request("GET", f"/api/v1/images/{SHA}.tgz", params={"worker_id": worker})
    assert missing.status == 404 and missing.json["error"]
    await request_build(api)
    queued = await api.request("GET", f"/api/v1/images/{SHA}.tgz", params={"worker_id": worker})
    assert queued.status == 404


async def test_a_failed_build_says_why_and_a_new_request_builds_it_again(api: ApiClient) -> None:
    await request_build(api)
    builder = await api.register(slots=1, build="true")
    build = await claim_build(api, builder)
    resp = await report(api, builder, build, False, error="Step 2/2 : RUN exit 1\nreturned a non-zero code: 1")
    assert resp.status == 200, resp.body
    failed = await status(api)
    assert failed["status"] == "failed" and "non-zero code" in failed["error"]
    assert (await report(api, builder, build, False, error="again")).status == 409  # reported once
    assert (await request_build(api))["status"]["status"] == "queued"
    assert (await claim_build(api, builder))["build"]["sha"] == SHA


async def test_builds_are_seen_only_by_the_courses_that_asked(api_service: ApiService) -> None:
    admin = ApiClient(api_service.url)
    await create_course(admin, "course-a")
    await create_course(admin, "course-b")
    a = ApiClient(api_service.url, client_token=await issue_token(admin, "course-a"))
    b = ApiClient(api_service.url, client_token=await issue_token(admin, "course-b"))
    await request_build(a)
    hidden = await b.request("GET", f"/api/v1/grader_images/status/{SHA}", auth=True)
    assert hidden.status == 404
    assert (await status(admin))["status"] == "queued"
    # Asking for the same Dockerfile makes it B's too (the image is the same image).
    assert (await request_build(b))["status"]["status"] == "queued"
    assert (await status(b))["status"] == "queued"


async def test_a_build_stuck_past_its_timeout_is_queued_again_then_failed(make_api: MakeApi) -> None:
    service = await make_api(build_timeout_s=0.5, max_attempts=2)
    api = ApiClient(service.url)
    await request_build(api)
    builder = await api.register(slots=2, build="true")
    first = await claim_build(api, builder)
    # The builder never reports: after the timeout the build is queued again for a second attempt.
    requeued = await eventually(lambda: status(api), lambda s: s["status"] == "queued", timeout=10)
    assert "did not finish within" in requeued["error"]
    second = await claim_build(api, builder)
    assert second["attempt"] != first["attempt"]
    assert (await upload(api, builder, first, b"late")).status == 409  # the first attempt lost it
    failed = await eventually(lambda: status(api), lambda s: s["status"] == "failed", timeout=10)
    assert "did not finish within" in failed["error"] and "2 attempt" in failed["error"]


async def test_the_holding_pen_hears_of_every_ended_build(api_service: ApiService) -> None:
    heard: list[tuple[str, bool, str | None]] = []

    class Pen:
        async def build_finished(self, sha: str, succeeded: bool, error: str | None) -> None:
            heard.append((sha, succeeded, error))

    # Services is frozen; the coordinator's holding pen will be a field of it.
    object.__setattr__(api_service.services, "holding_pen", Pen())
    api = ApiClient(api_service.url)
    other = build_request(DOCKERFILE + "RUN exit 1\n")
    await request_build(api)
    await request_build(api, other)
    builder = await api.register(slots=2, build="true")
    good, bad = await claim_build(api, builder), await claim_build(api, builder)
    assert (await upload(api, builder, good, b"archive")).status == 200
    assert (await report(api, builder, good, True)).status == 200
    assert (await report(api, builder, bad, False, error="RUN exit 1: returned 1")).status == 200
    assert heard == [(good["build"]["sha"], True, None), (bad["build"]["sha"], False, "RUN exit 1: returned 1")]


async def test_an_archive_over_the_size_cap_is_refused(make_api: MakeApi) -> None:
    service = await make_api(max_image_bytes=4096)
    api = ApiClient(service.url)
    await request_build(api)
    builder = await api.register(slots=1, build="true")
    build = await claim_build(api, builder)
    refused = await upload(api, builder, build, b"x" * 5000)
    assert refused.status == 413 and "4096" in refused.json["error"]
    assert (await report(api, builder, build, True)).status == 409  # nothing was stored
    assert (await upload(api, builder, build, b"x" * 4096)).status == 200
    assert (await report(api, builder, build, True)).status == 200


async def test_an_archive_larger_than_one_store_message_is_served_whole(api: ApiClient) -> None:
    # Over nx-27017's 48 MB message limit, which one read of every chunk would exceed.
    archive = os.urandom(50 << 20)
    await request_build(api)
    builder = await api.register(slots=1, build="true")
    build = await claim_build(api, builder)
    # 50 MB take a loaded machine longer than the worker timeout (3 s here): the builder keeps
    # its heartbeat going meanwhile, as a grader's does.
    async with heartbeating(api, builder):
        assert (await upload(api, builder, build, archive)).status == 200
        assert (await report(api, builder, build, True)).status == 200
    got = await api.request("GET", f"/api/v1/images/{SHA}.tgz", params={"worker_id": builder}, timeout=120)
    assert got.status == 200 and len(got.body) == len(archive) and got.body == archive


async def test_a_build_whose_builder_died_is_queued_again(api: ApiClient) -> None:
    await request_build(api)
    builder = await api.register(slots=1, build="true")
    await claim_build(api, builder)
    # The builder sends no heartbeat: once it is declared dead (3 s here) its build goes back.
    requeued = await eventually(lambda: status(api), lambda s: s["status"] == "queued", timeout=20, interval=0.2)
    assert "declared dead" in requeued["error"]
    other = await api.register(slots=1, build="true")
    assert (await claim_build(api, other))["build"]["sha"] == SHA
