"""A single job's response: what its last stage said about the grade (see broadway/grading.py).

/job/result.json when the stage wrote one, else the stage's stdout when that (or its last line) is a JSON object
(correctomatic's images print their response there). The API checks the object against the
container-response schema; the grader only makes sure it is a JSON object of bounded size.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
MAX_RESPONSE_BYTES = 1 << 20


@dataclass(frozen=True)
class Response:
    """Either `value` (the object) or `error` (why result.json was not one); both None: none given."""

    value: dict[str, Any] | None = None
    error: str | None = None


def capture_response(job_dir: Path, stdout: bytes | None) -> Response:
    """The last stage's response: /job/result.json if it exists, else stdout if it is (or its last
    line is) a JSON object."""
    path = job_dir / RESULT_FILE
    if os.path.lexists(path):
        return _from_file(path)
    if stdout is not None:
        value = _json_object(stdout)
        if value is not None:
            return Response(value=value)
    return Response()


def _from_file(path: Path) -> Response:
    # The stage owns /job: result.json may be a symlink to a file of the grader's host, or a
    # FIFO that never ends. Open it without following links or blocking, and read only a file.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return Response(error=f"/job/{RESULT_FILE} cannot be read ({exc.strerror or exc}; a symlink is not read)")
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Response(error=f"/job/{RESULT_FILE} is not a regular file")
        data = handle.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        return Response(error=f"/job/{RESULT_FILE} is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        value = json.loads(data)
    except ValueError as exc:
        return Response(error=f"/job/{RESULT_FILE} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        return Response(error=f"/job/{RESULT_FILE} is not a JSON object (it is {_json_kind(value)})")
    return Response(value=value)


def _json_object(data: bytes) -> dict[str, Any] | None:
    """stdout as a JSON object: all of it, or else its last line (a stage that prints progress
    first, then its response, as a shell script's `echo` at the end does)."""
    text = data.strip()
    for candidate in (text, text.rsplit(b"\n", 1)[-1].strip()):
        if not candidate.startswith(b"{"):
            continue
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"
