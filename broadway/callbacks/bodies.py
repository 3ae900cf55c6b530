"""The JSON a callback carries, built from the terminal document (plain values, string ids).

Jobs speak correctomatic's shapes, plus additive fields (job_id, status, finished_at):
- succeeded: {"success": true, "work_id", "grade", "comments", "job_id", "status"}
- failed or cancelled: {"success": false, "work_id", "error", "job_id", "status"}
`grade` and `comments` are read from the job document's fields of those names, which the
lifecycle sets from the parsed result when it ends the job.

An Orca job's callback is Orca's GradingJobResult (orca_body).

A grading run's callback carries its summary:
{"grading_run_id", "status", "success", "counts": {job status: n}, "n_students", "error"?, times}.

Bodies are encoded with sorted keys, so the same document always gives the same bytes; the
deliverer also freezes the body at the first attempt (see broadway/store/deliveries.py).
"""

from __future__ import annotations

import json
from typing import Any

_DEFAULT_ERRORS = {"cancelled": "the job was cancelled", "failed": "the job failed"}


def job_body(doc: dict[str, Any]) -> dict[str, Any]:
    """The callback of a terminal job document."""
    if doc.get("orca_key") is not None:
        return orca_body(doc)
    status = str(doc.get("status"))
    body: dict[str, Any] = {"job_id": str(doc["_id"]), "status": status, "work_id": doc.get("work_id")}
    if status == "succeeded":
        comments = doc.get("comments")
        body.update(success=True, grade=doc.get("grade"), comments=comments if isinstance(comments, list) else [])
    else:
        body.update(success=False, error=doc.get("error") or _DEFAULT_ERRORS.get(status, f"the job ended {status}"))
    if doc.get("finished_at") is not None:
        body["finished_at"] = doc["finished_at"]
    return body


def orca_body(doc: dict[str, Any]) -> dict[str, Any]:
    """An Orca job's callback: its GradingJobResult ({"output"?, "shell_responses", "errors",
    "key"}), as its grader's report made it, or, for a job that ended without one (cancelled,
    its image's build failed, given up after its attempts), one that says why."""
    response = doc.get("orca_response")
    if isinstance(response, dict):
        return {**response, "key": doc.get("orca_key")}
    status = str(doc.get("status"))
    error = doc.get("error") or _DEFAULT_ERRORS.get(status, f"the job ended {status}")
    return {"key": doc.get("orca_key"), "shell_responses": [], "errors": [error]}


def run_body(doc: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    """The callback of a finished grading run: its summary."""
    status = str(doc.get("status"))
    body: dict[str, Any] = {
        "grading_run_id": str(doc["_id"]),
        "status": status,
        "success": status == "succeeded",
        "counts": dict(sorted(counts.items())),
        "n_students": doc.get("n_students"),
    }
    for key in ("error", "created_at", "started_at", "finished_at"):
        if doc.get(key) is not None:
            body[key] = doc[key]
    return body


def encode(body: dict[str, Any]) -> str:
    """The exact text sent (and signed): compact, ASCII, keys sorted."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
