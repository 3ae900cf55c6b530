"""Environment expansion, as the grader receives it and as the status endpoint shows it."""

from __future__ import annotations

import json

from tests.helpers import ApiClient, stage


def env_dict(entries: list[str]) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in entries)


async def test_grader_receives_expanded_env_as_name_value_list(api: ApiClient) -> None:
    config = {
        "env": {"COURSE": "cs241", "SHARED": "run", "URL": "http://x/?a=b&c=d"},
        "student_pipeline": [
            stage(env={"NETID": "", "WHO": "$NETID", "LITERAL": "plain", "DOLLAR": "$5 = cheap", "LINK": "$URL"})
        ],
        "students": [{"NETID": "alice", "SHARED": "student"}],
    }
    run_id = await api.submit_and_start(config)
    worker = await api.register()
    job = (await api.poll(worker)).json
    env_list = job["stages"][0]["env"]
    assert isinstance(env_list, list) and all(isinstance(e, str) for e in env_list)
    env = env_dict(env_list)
    assert env["NETID"] == "alice" and env["WHO"] == "alice"
    assert env["LITERAL"] == "plain"
    assert env["DOLLAR"] == "$5 = cheap"
    assert env["LINK"] == "http://x/?a=b&c=d"
    assert env["COURSE"] == "cs241"
    assert env["SHARED"] == "student", "the student's entry overlays the run env"
    assert env["GRADING_RUN_ID"] == run_id
    assert env["GRADING_JOB_ID"] == job["job_id"]
    status = await api.status(run_id)
    shown = status["student_statuses"][0]["stages"][0]["env"]
    assert shown["WHO"] == "alice" and isinstance(shown, dict)


async def test_unresolvable_reference_is_400_naming_stage_and_variable(api: ApiClient) -> None:
    config = {"student_pipeline": [stage(), stage(env={"X": "$MISSING"})], "students": [{"A": "1"}]}
    resp = await api.request("POST", "/api/v1/grading_run", json_body={"json_payload": json.dumps(config)}, auth=True)
    assert resp.status == 400
    assert "student_pipeline[1]" in resp.json["error"] and "MISSING" in resp.json["error"]
    same_name = {"student_pipeline": [stage(env={"NOPE": ""})], "students": [{"A": "1"}]}
    resp = await api.request("POST", "/api/v1/grading_run", json_body=same_name, auth=True)
    assert resp.status == 400 and "NOPE" in resp.json["error"]


async def test_postprocessing_cannot_reference_student_variables(api: ApiClient) -> None:
    config = {
        "student_pipeline": [stage(env={"N": ""})],
        "students": [{"N": "1"}],
        "postprocessing_pipeline": [stage(env={"N": ""})],
    }
    resp = await api.request("POST", "/api/v1/grading_run", json_body=config, auth=True)
    assert resp.status == 400 and "postprocessing_pipeline[0]" in resp.json["error"]


async def test_reserved_names_cannot_be_set_by_the_config(api: ApiClient) -> None:
    config = {"student_pipeline": [stage()], "students": [{"GRADING_JOB_ID": "fake"}]}
    resp = await api.request("POST", "/api/v1/grading_run", json_body=config, auth=True)
    assert resp.status == 400 and "reserved" in resp.json["error"]
