"""Orca's GradingJobConfig and grading scripts, checked as PUT /grading_queue will check them:
every problem listed (Orca answers 400 {"errors": [...]}), each naming the field or command."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from broadway.orca.config import OrcaConfigError, parse_grading_job
from broadway.orca.script import ABORT, OUTPUT, BashStep, ConditionStep, ScriptError, parse_script


def config(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": '{"submission": 17}',
        "collation": {"type": "team", "id": "42"},
        "metadata_table": {"assignment_name": "A1"},
        "files": {
            "submission": {
                "url": "https://lms.example/files/sub.zip",
                "mime_type": "application/zip",
                "should_replace_paths": False,
            }
        },
        "priority": 1500,
        "script": [{"cmd": ["make"], "on_complete": "output"}],
        "response_url": "https://lms.example/grading/17",
        "grader_image_sha": "f00d",
    }
    body.update(fields)
    return body


def errors_of(body: Any) -> list[str]:
    with pytest.raises(OrcaConfigError) as caught:
        parse_grading_job(body)
    return caught.value.errors


def script_errors(script: Any) -> list[str]:
    with pytest.raises(ScriptError) as caught:
        parse_script(script)
    return caught.value.errors


def test_a_valid_config_gives_every_field_and_the_stage_the_grader_runs() -> None:
    parsed = parse_grading_job(config(container_response_url="http://10.0.0.2/grading/17"))
    assert parsed.key == '{"submission": 17}'
    assert (parsed.collation.type, parsed.collation.id) == ("team", "42")
    assert parsed.files["submission"].mime_type == "application/zip"
    assert parsed.priority == 1500 and parsed.release_delay_s == 1.5  # Orca: milliseconds
    assert parsed.container_response_url == "http://10.0.0.2/grading/17"
    assert parsed.grader_image_sha == "f00d"
    stage = parsed.orca_stage_fields()
    assert stage["script"] == [{"cmd": ["make"], "on_complete": "output"}]
    assert stage["files"]["submission"]["url"] == "https://lms.example/files/sub.zip"
    assert stage["key"] == parsed.key


def test_every_schema_problem_is_listed_with_its_place() -> None:
    body = config(key=7, priority=-1, collation={"type": "group", "id": "1"}, response_url="ftp://lms/x")
    del body["grader_image_sha"]
    errors = errors_of(body)
    assert "$: 'grader_image_sha' is a required property" in errors
    assert "$.key: 7 is not of type 'string'" in errors
    assert any(e.startswith("$.priority:") for e in errors)
    assert any(e.startswith("$.collation.type:") for e in errors)
    assert "$.response_url: must be an http:// or https:// URL" in errors


def test_file_urls_and_names_must_be_safe() -> None:
    files = {
        "../escape": {"url": "https://lms/a", "mime_type": "text/plain", "should_replace_paths": False},
        "local": {"url": "file:///etc/shadow", "mime_type": "text/plain", "should_replace_paths": False},
    }
    errors = errors_of(config(files=files))
    assert "$.files: file name '../escape' must be one path segment (no '/', not '.' or '..')" in errors
    assert "$.files.local.url: must be an http:// or https:// URL" in errors


def test_an_archive_the_grader_cannot_unpack_is_refused_at_submission() -> None:
    files = {
        "s": {"url": "https://lms/s.7z", "mime_type": "application/x-7z-compressed", "should_replace_paths": False}
    }
    assert errors_of(config(files=files)) == [
        "$.files.s.mime_type: application/x-7z-compressed archives are not unpacked by this grader"
    ]


def test_unknown_fields_are_refused_as_orca_does() -> None:
    errors = errors_of(config(queue="fast"))
    assert len(errors) == 1 and "queue" in errors[0] and "allowed:" in errors[0]


def test_script_problems_name_the_command_even_in_nested_lists() -> None:
    script = [
        {"cmd": "make", "on_fail": [{"cmd": "echo build failed"}, {"cmd": "cleanup", "on_complete": "x"}]},
        {"cmd": ["run"], "on_complete": 9},
        {"condition": {"predicate": "symlink", "path": "/a"}},
    ]
    errors = errors_of(config(script=script))
    assert "script[0].on_fail[1]: on_complete label 'x' names no command" in errors
    assert "script[1]: on_complete index 9 is out of range (its list has 3 commands)" in errors
    assert "script[2]: condition.predicate must be one of exists, file, dir" in errors


def test_a_cycle_is_refused_naming_the_command_that_closes_it() -> None:
    script = [
        {"cmd": "a", "label": "start"},
        {"cmd": "b", "on_fail": [{"cmd": "retry", "on_complete": "start"}]},
    ]
    assert script_errors(script) == [
        "script[1].on_fail[0]: on_complete leads back to script[0], a cycle (the script must be acyclic)"
    ]
    assert script_errors([{"condition": {"predicate": "file", "path": "/x"}, "on_false": 0}]) == [
        "script[0]: on_false leads back to script[0], a cycle (the script must be acyclic)"
    ]


def test_labels_are_unique_and_not_keywords() -> None:
    errors = script_errors([{"cmd": "a", "label": "x"}, {"cmd": "b", "label": "x"}, {"cmd": "c", "label": "output"}])
    assert "script[1]: label 'x' is already used by script[0]" in errors
    assert "script[2]: label 'output' is a reserved word (next, output, abort)" in errors


def test_commands_must_be_runnable() -> None:
    errors = script_errors([{"cmd": []}, {"cmd": "  "}, {"cmd": ["ls", 3]}, {"cmd": "x", "timeout": 0}, {"label": "y"}])
    assert errors[:3] == [f"script[{i}]: cmd must be a non-empty list of strings, or a string" for i in range(3)]
    assert "script[3]: timeout must be a positive number of seconds" in errors
    assert "script[4]: must have `cmd` (a shell command) or `condition`" in errors
    assert script_errors([]) == ["script: must be a non-empty list of commands"]


def test_the_flattened_graph_follows_orca_defaults() -> None:
    script = parse_script(
        [
            {"cmd": ["javac", "Main.java"], "on_fail": [{"cmd": "echo compile error"}, {"cmd": "cat log"}]},
            {"condition": {"predicate": "file", "path": "$BUILD/Main.class"}, "on_false": "report"},
            {"cmd": "java Main", "on_complete": "output", "working_dir": "$BUILD", "timeout": 5},
            {"cmd": "echo missing", "label": "report", "on_complete": "abort"},
        ]
    ).steps
    javac, condition, java, report, compile_error, cat_log = script
    assert isinstance(javac, BashStep) and isinstance(condition, ConditionStep)
    # Defaults: on_complete next, on_fail abort, on_true/on_false next.
    assert (javac.on_complete, javac.on_fail) == (1, 4)
    assert compile_error.where == "script[0].on_fail[0]" and compile_error.on_complete == 5
    # "next" off the end of a nested list continues after the command that owns it.
    assert isinstance(cat_log, BashStep) and (cat_log.on_complete, cat_log.on_fail) == (1, ABORT)
    assert (condition.on_true, condition.on_false) == (2, 3)
    assert isinstance(java, BashStep) and (java.on_complete, java.timeout_s, java.working_dir) == (
        OUTPUT,
        5.0,
        "$BUILD",
    )
    # "next" off the end of the script ends it as output (it ran to its end).
    assert isinstance(report, BashStep) and report.on_fail == ABORT
    assert parse_script([{"cmd": "a"}]).steps[0].on_complete == OUTPUT  # type: ignore[union-attr]


def test_nested_indices_are_relative_to_their_list() -> None:
    steps = parse_script([{"cmd": "a", "on_fail": [{"cmd": "b", "on_fail": 1}, {"cmd": "c"}]}, {"cmd": "d"}]).steps
    b = steps[2]
    assert isinstance(b, BashStep) and b.where == "script[0].on_fail[0]"
    assert steps[b.on_fail].where == "script[0].on_fail[1]"  # type: ignore[index]


def test_a_huge_script_is_refused_not_walked() -> None:
    chain = [{"cmd": "true"} for _ in range(501)]
    assert script_errors(chain) == ["script: the script has more than 500 commands in all"]
    deep: list[dict[str, Any]] = [{"cmd": "x"}]
    for _ in range(30):
        deep = [{"cmd": "x", "on_fail": copy.deepcopy(deep)}]
    assert any("nested more than 20 lists deep" in e for e in script_errors(deep))
