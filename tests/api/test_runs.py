"""Submitting, starting and inspecting grading runs (client endpoints)."""

from __future__ import annotations

import json

import pytest

from broadway.server import ApiService
from tests.helpers import ApiClient, run_config, stage

RUNS = "/api/v1/grading_run"


async def test_submit_with_json_payload_string_returns_24_hex_id(api: ApiClient) -> None:
    resp = await api.request("POST", RUNS, json_body={"json_payload": json.dumps(run_config())}, auth=True)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    run_id = resp.json["id"]
    assert len(run_id) == 24 and int(run_id, 16) >= 0


async def test_submit_accepts_form_encoding_and_config_object_body(api: ApiClient) -> None:
    form = await api.request("POST", RUNS, form={"json_payload": json.dumps(run_config())}, auth=True)
    assert form.status == 200, form.body
    whole = await api.request("POST", RUNS, json_body=run_config(), auth=True)
    assert whole.status == 200, whole.body
    nested = await api.request("POST", RUNS, json_body={"json_payload": run_config()}, auth=True)
    assert nested.status == 200, nested.body
    ids = {form.json["id"], whole.json["id"], nested.json["id"]}
    assert len(ids) == 3
    for run_id in ids:
        assert (await api.status(run_id))["status"] == "created"


async def test_new_run_reports_created_jobs_in_seed_shape(api: ApiClient) -> None:
    config = run_config(students=3, postprocessing_pipeline=[stage(entrypoint=["true"])])
    run_id = await api.submit(config)
    status = await api.status(run_id)
    assert status["status"] == "created"
    assert [s["status"] for s in status["student_statuses"]] == ["created"] * 3
    for entry in status["student_statuses"]:
        assert set(entry) >= {"job_id", "stages", "status"}
        assert entry["stages"][0]["image"] == "busybox-test"
    assert [s["student"]["STUDENT_ID"] for s in status["student_statuses"]] == ["s0", "s1", "s2"]
    assert set(status["postprocessing_status"]) >= {"job_id", "status"}
    assert "preprocessing_status" not in status


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"students": []}, "student_pipeline"),
        ({"student_pipeline": [], "students": []}, "$.student_pipeline"),
        ({"student_pipeline": [{"image": ""}], "students": []}, "$.student_pipeline[0].image"),
        ({"student_pipeline": [{"image": "a", "bogus": 1}], "students": []}, "bogus"),
        ({"student_pipeline": [{"image": "a"}], "students": [], "extra": 1}, "extra"),
        (
            {"student_pipeline": [{"image": "a", "entrypoint": "ls"}], "students": []},
            "$.student_pipeline[0].entrypoint",
        ),
        ({"student_pipeline": [{"image": "a", "enable_networking": "yes"}], "students": []}, "enable_networking"),
        ({"student_pipeline": [{"image": "a"}], "students": [{"X": 1}]}, "$.students[0].X"),
        ({"student_pipeline": [{"image": "a"}], "students": [{"BAD-NAME": "x"}]}, "$.students[0]"),
        ({"student_pipeline": [{"image": "a", "timeout": -1}], "students": []}, "timeout"),
        ({"student_pipeline": [{"image": "a", "memory": "lots"}], "students": []}, "memory"),
        ({"student_pipeline": [{"image": "a"}], "students": {}}, "$.students"),
        ([1, 2], "$"),
    ],
)
async def test_invalid_config_is_400_naming_the_place_and_stores_nothing(
    api: ApiClient, api_service: ApiService, config: object, expected: str
) -> None:
    resp = await api.request("POST", RUNS, json_body={"json_payload": json.dumps(config)}, auth=True)
    assert resp.status == 400, resp.body
    assert expected in resp.json["error"]
    assert await api_service.store.db.runs.count_documents({}) == 0
    assert await api_service.store.db.jobs.count_documents({}) == 0


async def test_bad_payload_encodings_are_400(api: ApiClient) -> None:
    missing = await api.request("POST", RUNS, json_body={"nothing": 1}, auth=True)
    assert missing.status == 400 and "json_payload" in missing.json["error"]
    not_json = await api.request("POST", RUNS, form={"json_payload": "{not json"}, auth=True)
    assert not_json.status == 400 and "not valid JSON" in not_json.json["error"]
    broken_body = await api.request(
        "POST", RUNS, body=b'{"json_payload": ', headers={"Content-Type": "application/json"}, auth=True
    )
    assert broken_body.status == 400 and "not valid JSON" in broken_body.json["error"]
    bad_utf8 = await api.request(
        "POST", RUNS, body=b'{"json_payload": "\xff\xfe"}', headers={"Content-Type": "application/json"}, auth=True
    )
    assert bad_utf8.status == 400
    deep = await api.request("POST", RUNS, body=b"[" * 100_000 + b"]" * 100_000, auth=True)
    assert deep.status == 400 and "error" in deep.json


async def test_client_endpoints_need_the_client_token(api: ApiClient) -> None:
    run_id = await api.submit(run_config())
    cases = [
        ("POST", RUNS, {}),
        ("POST", RUNS, {"Authorization": "Bearer wrong"}),
        ("POST", RUNS, {"Authorization": f"Bearer {api.cluster_token}"}),
        ("GET", f"{RUNS}/{run_id}", {}),
        ("POST", f"{RUNS}/{run_id}", {"Authorization": "Basic abc"}),
    ]
    for method, path, headers in cases:
        resp = await api.request(method, path, json_body=run_config(), headers=headers)
        assert resp.status == 401, (method, path, headers)
        assert "client token" in resp.json["error"]
    assert (await api.status(run_id))["status"] == "created"


async def test_unknown_run_is_404_json(api: ApiClient) -> None:
    for run_id in ("0" * 24, "not-an-id", "zz" * 12):
        get = await api.request("GET", f"{RUNS}/{run_id}", auth=True)
        start = await api.request("POST", f"{RUNS}/{run_id}", auth=True)
        assert get.status == start.status == 404
        assert "no grading run" in get.json["error"]


async def test_start_twice_is_400(api: ApiClient) -> None:
    run_id = await api.submit(run_config())
    assert (await api.start(run_id)).status == 200
    again = await api.start(run_id)
    assert again.status == 400 and "already started" in again.json["error"]


async def test_start_queues_student_jobs(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=4))
    status = await api.status(run_id)
    assert status["status"] == "running"
    assert [s["status"] for s in status["student_statuses"]] == ["queued"] * 4
    assert status["counts"]["queued"] == 4


async def test_cancel_cancels_unfinished_jobs_and_refuses_late_reports(api: ApiClient) -> None:
    run_id = await api.submit_and_start(run_config(students=3))
    worker = await api.register()
    job = (await api.poll(worker)).json
    cancel = await api.request("POST", f"{RUNS}/{run_id}/cancel", auth=True)
    assert cancel.status == 200 and cancel.json["status"] == "cancelled"
    status = await api.status(run_id)
    assert status["status"] == "cancelled"
    assert {s["status"] for s in status["student_statuses"]} == {"cancelled"}
    assert (await api.report(worker, job["job_id"])).status == 409
    assert (await api.poll(worker)).status == 412
    again = await api.request("POST", f"{RUNS}/{run_id}/cancel", auth=True)
    assert again.status == 400


async def test_unknown_path_and_method_answer_json(api: ApiClient) -> None:
    missing = await api.request("GET", "/api/v1/nothing")
    assert missing.status == 404 and "error" in missing.json
    wrong_method = await api.request("DELETE", RUNS, auth=True)
    assert wrong_method.status == 405 and "error" in wrong_method.json
