"""Reading a single submission (JSON, multipart form, correctomatic's form) and planning its stages."""

from __future__ import annotations

import base64

import pytest
from tornado.httputil import HTTPFile

from broadway.assignments import Assignment
from broadway.submissions import Submission, from_form, from_json, plan_stages
from broadway.validation import StageCeilings, SubmissionError

MiB = 1 << 20
HW1 = Assignment(
    name="hw1",
    course="default",
    pipeline=[{"image": "grader", "env": {"LEVEL": "$LEVEL", "FILE": "main.c"}}, {"image": "report", "timeout": 5}],
    env={"LEVEL": "1"},
    allowed_params=["LEVEL", "STRICT"],
    limits={"timeout": 20, "memory": "256m"},
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_json_submission_decodes_files_and_keeps_its_fields() -> None:
    sub = from_json(
        {"assignment": "hw1", "files": {"src/main.c": {"content": b64(b"int main;")}}, "params": {"LEVEL": "2"},
         "work_id": "w-1", "callback_url": "http://127.0.0.1:9/cb", "priority": 5},
        MiB,
    )  # fmt: skip
    assert sub.files == {"src/main.c": b"int main;"} and sub.params == {"LEVEL": "2"}
    assert (sub.assignment, sub.work_id, sub.priority) == ("hw1", "w-1", 5)
    image_only = from_json({"image": "course/quiz"}, MiB)
    assert image_only.pipeline == [{"image": "course/quiz"}] and image_only.assignment is None


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "exactly one of"),
        ({"assignment": "a", "image": "b"}, "exactly one of"),
        ({"assignment": "a", "files": {"x": {"content": "not base64!"}}}, "$.files.x.content: not valid base64"),
        ({"assignment": "a", "files": {"../etc/passwd": {"content": ""}}}, "../etc/passwd"),
        ({"assignment": "a", "files": {"/abs": {"content": ""}}}, "/abs"),
        ({"assignment": "a", "priority": "high"}, "$.priority"),
        ({"assignment": "a", "params": {"X": 1}}, "$.params.X"),
        ({"assignment": "a", "colour": "red"}, "colour"),
        ({"pipeline": [{"image": "a", "bogus": True}]}, "bogus"),
    ],
)
def test_bad_json_submissions_name_the_field(body: dict[str, object], says: str) -> None:
    with pytest.raises(SubmissionError) as caught:
        from_json(body, MiB)
    assert says in str(caught.value)


def test_files_over_the_cap_are_refused() -> None:
    with pytest.raises(SubmissionError, match="--max-files-mb"):
        from_json({"assignment": "a", "files": {"big": {"content": b64(b"x" * (MiB + 1))}}}, MiB)


def test_correctomatic_form_with_file_part_and_param_pairs() -> None:
    sub = from_form(
        {"work_id": [b"42"], "assignment_id": [b"hw1"], "callback": [b"http://127.0.0.1:9/cb"],
         "param": [b"LEVEL=3", b"STRICT=a=b"]},
        {"file": [HTTPFile(filename="C:\\Users\\me\\main.c", body=b"code", content_type="text/x-c")]},
        MiB,
    )  # fmt: skip
    assert sub.assignment == "hw1" and sub.callback_url == "http://127.0.0.1:9/cb" and sub.work_id == "42"
    assert sub.params == {"LEVEL": "3", "STRICT": "a=b"}, "values may contain '='"
    assert sub.files == {"main.c": b"code"} and sub.exercise == "main.c"


@pytest.mark.parametrize(
    ("arguments", "uploads", "says"),
    [
        ({"assignment": [b"a"], "param": [b"NOEQUALS"]}, {}, "NAME=VALUE"),
        ({"assignment": [b"a"], "priority": [b"soon"]}, {}, "priority"),
        ({"assignment": [b"a"], "colour": [b"red"]}, {}, "unknown form field(s): colour"),
        ({"assignment": [b"a", b"b"]}, {}, "given 2 times"),
        ({"assignment": [b"a"]}, {"file": [HTTPFile(filename="..", body=b"", content_type="")]}, "not allowed"),
    ],
)
def test_bad_forms_name_the_field(
    arguments: dict[str, list[bytes]], uploads: dict[str, list[HTTPFile]], says: str
) -> None:
    with pytest.raises(SubmissionError) as caught:
        from_form(arguments, uploads, MiB)
    assert says in str(caught.value)


def test_planned_stages_apply_limits_params_and_the_reserved_variables() -> None:
    stages = plan_stages(Submission(assignment="hw1", params={"LEVEL": "2"}), HW1, "a" * 24, StageCeilings())
    first, second = stages
    assert first["env"]["LEVEL"] == "2" and first["env"]["FILE"] == "main.c"
    assert first["env"]["GRADING_JOB_ID"] == "a" * 24 and first["env"]["GRADING_RUN_ID"] == ""
    assert (first["timeout"], first["memory"]) == (20, "256m"), "the assignment's limits are the defaults"
    assert second["timeout"] == 5, "a stage's own limit wins"


def test_params_the_assignment_does_not_allow_and_reserved_names_are_refused() -> None:
    with pytest.raises(SubmissionError, match=r"\$\.params\.OTHER: not a parameter of assignment 'hw1'"):
        plan_stages(Submission(assignment="hw1", params={"OTHER": "x"}), HW1, "a" * 24, StageCeilings())
    inline = Submission(pipeline=[{"image": "x"}], params={"GRADING_JOB_ID": "forged"})
    with pytest.raises(SubmissionError, match="reserved"):
        plan_stages(inline, None, "a" * 24, StageCeilings())


def test_a_missing_param_and_the_ceilings_are_told_at_submission() -> None:
    needs = Assignment(name="n", course="default", pipeline=[{"image": "g", "env": {"X": "$X"}}], allowed_params=["X"])
    with pytest.raises(SubmissionError, match=r"\$X.*give it in params"):
        plan_stages(Submission(assignment="n"), needs, "a" * 24, StageCeilings())
    greedy = Submission(pipeline=[{"image": "g", "timeout": 7200}])
    with pytest.raises(SubmissionError, match="--max-stage-timeout"):
        plan_stages(greedy, None, "a" * 24, StageCeilings(max_timeout_s=3600))
