"""A single job's grade from its last stage's response (correctomatic's container response)."""

from __future__ import annotations

import json

import pytest

from broadway.grading import Grade, grade_of


def result(**fields: object) -> str:
    return json.dumps({"stages": [], **fields})


def test_a_valid_success_gives_grade_and_comments() -> None:
    grade = grade_of(result(response={"success": True, "grade": 7.98, "comments": ["a", "b"]}), stages_passed=True)
    assert grade == Grade(success=True, grade=7.98, comments=["a", "b"])
    comments_only = grade_of(result(response={"success": True, "comments": ["ok"]}), stages_passed=True)
    assert comments_only == Grade(success=True, grade=None, comments=["ok"])


def test_a_reported_failure_carries_its_error() -> None:
    grade = grade_of(result(response={"success": False, "error": "The dog ate my correction"}), stages_passed=True)
    assert grade == Grade(success=False, error="The dog ate my correction")


def test_no_response_leaves_the_decision_to_exit_codes() -> None:
    assert grade_of(result(), stages_passed=True) is None
    assert grade_of(result(), stages_passed=False) is None
    assert grade_of(None, stages_passed=True) is None


@pytest.mark.parametrize(
    ("response", "says"),
    [
        ({"success": True}, "neither a grade nor comments"),
        ({"success": True, "grade": "A"}, "$.grade"),
        ({"success": True, "comments": "good"}, "$.comments"),
        ({"success": False}, "'error' is a required property"),
        ({"grade": 5}, "'success' is a required property"),
        ([1, 2], "is not of type 'object'"),
    ],
)
def test_an_invalid_response_fails_the_job_saying_what_was_wrong(response: object, says: str) -> None:
    grade = grade_of(result(response=response), stages_passed=True)
    assert grade is not None and not grade.success
    assert grade.error is not None and says in grade.error


def test_unreadable_output_and_a_failed_stage_are_failures() -> None:
    unreadable = grade_of(result(response_error="stdout is not a JSON object"), stages_passed=True)
    assert unreadable is not None and "not a JSON object" in (unreadable.error or "")
    failed_stage = grade_of(result(response={"success": True, "grade": 10}), stages_passed=False)
    assert failed_stage is not None and not failed_stage.success and "stage failed" in (failed_stage.error or "")
