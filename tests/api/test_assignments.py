"""Assignments: saving, reading, replacing and deleting the recipes single submissions name."""

from __future__ import annotations

import pytest

from tests.helpers import ApiClient, stage

ASSIGNMENTS = "/api/v1/assignments"


def recipe(name: str = "hw1", **fields: object) -> dict[str, object]:
    body: dict[str, object] = {
        "name": name,
        "pipeline": [stage(entrypoint=["/grade.sh"], env={"LEVEL": "$LEVEL", "MODE": "strict"})],
        "env": {"LEVEL": "1"},
        "allowed_params": ["LEVEL"],
        "limits": {"timeout": 20, "memory": "256m"},
    }
    body.update(fields)
    return body


async def test_create_read_list_replace_delete(api: ApiClient) -> None:
    created = await api.request("POST", ASSIGNMENTS, json_body=recipe(), auth=True)
    assert created.status == 201, created.body
    assert created.headers["Location"] == f"{ASSIGNMENTS}/hw1"
    assert created.json["pipeline"][0]["entrypoint"] == ["/grade.sh"] and created.json["allowed_params"] == ["LEVEL"]
    one_image = await api.request("POST", ASSIGNMENTS, json_body={"name": "quiz", "image": "course/quiz"}, auth=True)
    assert one_image.status == 201 and one_image.json["pipeline"] == [{"image": "course/quiz"}]

    listed = await api.request("GET", ASSIGNMENTS, auth=True)
    assert [a["name"] for a in listed.json["assignments"]] == ["hw1", "quiz"]
    got = await api.request("GET", f"{ASSIGNMENTS}/hw1", auth=True)
    assert got.status == 200 and got.json == created.json

    replaced = await api.request("PUT", f"{ASSIGNMENTS}/hw1", json_body=recipe(env={"LEVEL": "2"}), auth=True)
    assert replaced.status == 200 and replaced.json["env"] == {"LEVEL": "2"}
    assert replaced.json["created_at"] == created.json["created_at"] <= replaced.json["updated_at"]
    fresh = await api.request("PUT", f"{ASSIGNMENTS}/hw2", json_body={"image": "course/hw2"}, auth=True)
    assert fresh.status == 201 and fresh.json["name"] == "hw2", "PUT creates, taking the name from the path"

    deleted = await api.request("DELETE", f"{ASSIGNMENTS}/hw1", auth=True)
    assert deleted.status == 200
    assert (await api.request("GET", f"{ASSIGNMENTS}/hw1", auth=True)).status == 404
    assert (await api.request("DELETE", f"{ASSIGNMENTS}/hw1", auth=True)).status == 404


async def test_a_taken_name_is_409_and_nothing_changes(api: ApiClient) -> None:
    assert (await api.request("POST", ASSIGNMENTS, json_body=recipe(), auth=True)).status == 201
    again = await api.request("POST", ASSIGNMENTS, json_body=recipe(env={"LEVEL": "9"}), auth=True)
    assert again.status == 409 and "PUT" in again.json["error"]
    assert (await api.request("GET", f"{ASSIGNMENTS}/hw1", auth=True)).json["env"] == {"LEVEL": "1"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"name": "x"}, "either 'pipeline'"),
        ({"name": "x", "image": "a", "pipeline": [{"image": "b"}]}, "either 'pipeline'"),
        ({"name": "a b", "image": "a"}, "$.name"),
        ({"name": "x", "pipeline": []}, "$.pipeline"),
        ({"name": "x", "pipeline": [{"image": "a", "bogus": 1}]}, "bogus"),
        ({"name": "x", "image": "a", "limits": {"timeout": 0}}, "$.limits.timeout"),
        ({"name": "x", "image": "a", "limits": {"memory": "0"}}, "$.limits.memory"),
        ({"name": "x", "pipeline": [{"image": "a", "memory": "lots"}]}, "$.pipeline[0].memory"),
        ({"name": "x", "pipeline": [{"image": "a", "env": {"A": "$NOPE"}}]}, "$.pipeline[0].env.A"),
        ({"name": "x", "image": "a", "env": {"GRADING_JOB_ID": "1"}}, "reserved"),
        ({"name": "x", "image": "a", "allowed_params": ["GRADING_RUN_ID"]}, "reserved"),
        ({"name": "x", "image": "a", "allowed_params": ["not a name"]}, "$.allowed_params[0]"),
        ({"name": "x", "image": "a", "extra": True}, "extra"),
    ],
)
async def test_bad_assignments_are_400_naming_the_field_and_nothing_is_stored(
    api: ApiClient, body: dict[str, object], expected: str
) -> None:
    resp = await api.request("POST", ASSIGNMENTS, json_body=body, auth=True)
    assert resp.status == 400, resp.body
    assert expected in resp.json["error"], resp.json
    assert (await api.request("GET", ASSIGNMENTS, auth=True)).json["assignments"] == []


async def test_a_stage_may_refer_to_an_allowed_param_and_the_body_name_must_match_the_path(api: ApiClient) -> None:
    ok = await api.request(
        "POST", ASSIGNMENTS, json_body=recipe(env={}, allowed_params=["LEVEL"]), auth=True
    )  # $LEVEL is given by each submission
    assert ok.status == 201, ok.body
    mismatch = await api.request("PUT", f"{ASSIGNMENTS}/hw9", json_body=recipe("hw1"), auth=True)
    assert mismatch.status == 400 and "path" in mismatch.json["error"]
    not_json = await api.request("POST", ASSIGNMENTS, body="name=x", auth=True)
    assert not_json.status == 400


async def test_assignments_need_the_client_token(api: ApiClient) -> None:
    for method, path in [("GET", ASSIGNMENTS), ("POST", ASSIGNMENTS), ("GET", f"{ASSIGNMENTS}/x"),
                         ("PUT", f"{ASSIGNMENTS}/x"), ("DELETE", f"{ASSIGNMENTS}/x")]:  # fmt: skip
        body = recipe("x") if method in ("POST", "PUT") else None
        resp = await api.request(method, path, json_body=body)
        assert resp.status == 401, (method, path, resp.status)
