"""A single job's grade, from what its last stage reported.

The grader puts the last stage's response in the job's result (`response`: the object in
/job/result.json if the stage wrote one, else its stdout if that is a JSON object;
`response_error` when there was something but it was not a JSON object). This module checks it
against correctomatic's container response (schemas/container_response.json) and says what the
job's outcome is. A job whose stages report no grade at all is decided by exit codes, as runs are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from broadway import schemas


@dataclass(frozen=True)
class Grade:
    """The outcome of a single job as the LMS is told it."""

    success: bool
    grade: float | None = None
    comments: list[str] = field(default_factory=list)
    error: str | None = None


def grade_of(result_text: str | None, stages_passed: bool) -> Grade | None:
    """The grade in a grader's result, or None when the stages reported none (exit codes decide).

    A response that is there but not valid fails the job with an error naming what was wrong.
    """
    try:
        result = json.loads(result_text) if result_text else {}
    except ValueError:
        return Grade(success=False, error="the grader's result is not JSON")
    if not isinstance(result, dict):
        return None
    if result.get("response_error"):
        return Grade(success=False, error=f"the grading container's response: {result['response_error']}"[:2000])
    response: Any = result.get("response")
    if response is None:
        return None
    try:
        schemas.validate("container_response", response)
    except schemas.SchemaError as e:
        return Grade(success=False, error=f"the grading container's response is not valid: {e}"[:2000])
    if response["success"]:
        if "grade" not in response and "comments" not in response:
            return Grade(
                success=False, error="the grading container reported success with neither a grade nor comments"
            )
        if not stages_passed:
            return Grade(success=False, error="a stage failed although the container reported success")
        return Grade(success=True, grade=response.get("grade"), comments=list(response.get("comments", [])))
    return Grade(success=False, error=response["error"])
