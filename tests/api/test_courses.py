"""Courses and their tokens: created, changed and deleted by the admin; tokens shown once,
stored as a digest, revocable; without courses everything works as before."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from tests.api.courses_helpers import course_client, create_course, issue_token, token_secret
from tests.conftest import MakeApi
from tests.helpers import ApiClient, eventually, run_config

COURSES = "/api/v1/courses"


async def test_admin_creates_lists_changes_and_deletes_a_course(api: ApiClient) -> None:
    created = await create_course(api, "cs241", weight=2, rate={"per_second": 5, "burst": 10})
    assert created["name"] == "cs241" and created["weight"] == 2.0
    assert created["rate"] == {"per_second": 5.0, "burst": 10} and created["max_queued"] is None

    again = await api.request("POST", COURSES, json_body={"name": "cs241"}, auth=True)
    assert again.status == 409

    changed = await api.request("PATCH", f"{COURSES}/cs241", json_body={"max_queued": 500, "rate": None}, auth=True)
    assert changed.status == 200, changed.body
    assert changed.json["max_queued"] == 500 and changed.json["rate"] is None
    listed = (await api.request("GET", COURSES, auth=True)).json["courses"]
    assert [c["name"] for c in listed] == ["cs241"]

    deleted = await api.request("DELETE", f"{COURSES}/cs241", auth=True)
    assert deleted.status == 200
    assert (await api.request("GET", f"{COURSES}/cs241", auth=True)).status == 404


async def test_bad_course_definitions_are_400_naming_the_field(api: ApiClient) -> None:
    cases = [
        ({"name": "has space"}, "$.name"),
        ({"name": "default"}, "$.name"),
        ({"name": "c", "weight": 0}, "$.weight"),
        ({"name": "c", "weight": "heavy"}, "$.weight"),
        ({"name": "c", "rate": {"per_second": -1}}, "$.rate.per_second"),
        ({"name": "c", "rate": {"per_second": 1, "burst": 0}}, "$.rate.burst"),
        ({"name": "c", "max_queued": 0}, "$.max_queued"),
        ({"name": "c", "max_queued": 10**30}, "$.max_queued"),
        ({"name": "c", "colour": "red"}, "colour"),
    ]
    for body, named in cases:
        resp = await api.request("POST", COURSES, json_body=body, auth=True)
        assert resp.status == 400, (body, resp.body)
        assert named in resp.json["error"], (body, resp.json)
    assert (await api.request("PATCH", f"{COURSES}/nope", json_body={"weight": 2}, auth=True)).status == 404


async def test_a_token_is_shown_once_stored_as_a_digest_and_revocable(api: ApiClient, mongo_url: str) -> None:
    await create_course(api, "cs225")
    token = await issue_token(api, "cs225", label="prairielearn")
    course_api = ApiClient(api.base_url, client_token=token)
    assert (await course_api.request("GET", f"{COURSES}/cs225", auth=True)).status == 200

    listed = (await api.request("GET", f"{COURSES}/cs225/tokens", auth=True)).json["tokens"]
    assert len(listed) == 1 and listed[0]["label"] == "prairielearn" and listed[0]["last_used"] is not None
    assert token not in str(listed), "the list never shows the token again"
    client: AsyncMongoClient = AsyncMongoClient(mongo_url)
    try:
        docs = await client.get_default_database().course_tokens.find({}).to_list()
    finally:
        await client.close()
    secret = token_secret(token)
    assert docs and all(secret not in str(d) for d in docs), "only a digest of the secret is stored"

    revoked = await api.request("DELETE", f"{COURSES}/cs225/tokens/{listed[0]['id']}", auth=True)
    assert revoked.status == 200 and revoked.json["revoked"] is True
    resp = await course_api.request("GET", f"{COURSES}/cs225", auth=True)
    assert resp.status == 401 and "revoked" in resp.json["error"]


async def test_deleting_a_course_revokes_its_tokens(api: ApiClient) -> None:
    course_api = await course_client(api, "gone")
    assert (await course_api.request("GET", "/api/v1/assignments", auth=True)).status == 200
    assert (await api.request("DELETE", f"{COURSES}/gone", auth=True)).status == 200
    assert (await course_api.request("GET", "/api/v1/assignments", auth=True)).status == 401


async def test_only_the_admin_manages_courses(api: ApiClient) -> None:
    course_api = await course_client(api, "cs173")
    await create_course(api, "cs374")
    # Its own course it reads; any other is not there for it.
    assert (await course_api.request("GET", f"{COURSES}/cs173", auth=True)).status == 200
    assert (await course_api.request("GET", f"{COURSES}/cs374", auth=True)).status == 404
    assert [c["name"] for c in (await course_api.request("GET", COURSES, auth=True)).json["courses"]] == ["cs173"]
    for method, path, body in [
        ("POST", COURSES, {"name": "mine"}),
        ("PATCH", f"{COURSES}/cs173", {"weight": 100}),
        ("DELETE", f"{COURSES}/cs173", None),
        ("POST", f"{COURSES}/cs173/tokens", {}),
    ]:
        resp = await course_api.request(method, path, json_body=body, auth=True)
        assert resp.status == 403, (method, path, resp.body)


async def test_without_courses_the_client_token_works_as_before(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=2))
    worker = await api.register()
    await api.work_off(worker)
    assert (await api.status(run_id))["status"] == "succeeded"
    assert (await api.request("GET", COURSES, auth=True)).json == {"courses": []}


async def test_broadway_admin_creates_a_course_and_issues_a_token(api: ApiClient) -> None:
    import asyncio
    import subprocess
    import sys

    from tests.processes import child_env

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        env = child_env(BROADWAY_CLIENT_TOKEN=api.client_token, BROADWAY_API_URL=api.base_url)
        return subprocess.run([sys.executable, "-m", "utils.admin", *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip

    created = await asyncio.to_thread(admin, "create", "cs241", "--weight", "2", "--rate", "5:20")
    assert created.returncode == 0, created.stderr
    assert "cs241  weight 2  5/s burst 20" in created.stdout
    issued = await asyncio.to_thread(admin, "issue-token", "cs241", "--label", "lms")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip().splitlines()[-1]
    course_api = ApiClient(api.base_url, client_token=token)
    assert (await course_api.request("GET", "/api/v1/courses/cs241", auth=True)).status == 200
    listed = await asyncio.to_thread(admin, "tokens", "cs241")
    assert "lms" in listed.stdout and token not in listed.stdout
    revoked = await asyncio.to_thread(admin, "revoke", "cs241", token)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert (await course_api.request("GET", "/api/v1/courses/cs241", auth=True)).status == 401
    again = await asyncio.to_thread(admin, "create", "cs241")
    assert again.returncode == 1 and "409" in again.stderr
    assert "cs241" in (await asyncio.to_thread(admin, "list")).stdout


async def test_a_course_with_its_own_callback_secret_gets_callbacks_signed_with_it(make_api: MakeApi) -> None:
    from broadway.callbacks.signing import verify
    from broadway.store.courses import CourseStore
    from tests.api.callback_receiver import CallbackReceiver

    course_secret = "course-secret-" + "k" * 30
    service = await make_api(callback_secret="deployment-secret-" + "d" * 30)
    # What server.py wires (see the report): the deliverer asks the owner course for its secret.
    assert service.deliverer is not None
    service.deliverer.secret_for = CourseStore(service.store.db).callback_secret_for
    admin = ApiClient(service.url)
    own = await course_client(admin, "signed", callback_secret=course_secret)
    plain = await course_client(admin, "plain")
    receiver = CallbackReceiver(course_secret).start()
    try:
        url = receiver.script("/cb")
        for client in (own, plain):
            body = {"pipeline": [{"image": "busybox-test", "entrypoint": ["true"]}],
                    "files": {"main.c": {"content": "aW50"}}, "callback_url": url}  # fmt: skip
            job = (await client.request("POST", "/api/v1/job", json_body=body, auth=True)).json["id"]
            assert (await client.request("DELETE", f"/api/v1/job/{job}", auth=True)).status == 200

        async def received() -> list[Any]:
            return list(receiver.at("/cb"))

        got = await eventually(received, lambda g: len(g) == 2)
    finally:
        await receiver.stop()
    by_course = {verify(course_secret, g.body, g.signature): g for g in got}
    assert set(by_course) == {True, False}, "only the course with its own secret is signed with it"
    assert verify("deployment-secret-" + "d" * 30, by_course[False].body, by_course[False].signature)
