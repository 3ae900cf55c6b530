"""Single submissions: what an LMS sends, checked and turned into one job's stages.

Three ways in, one result: a JSON body (POST /api/v1/job), a multipart form with the submission
as a `file` part (the same path), and correctomatic's `/grade` form. Nothing here touches the
store: the handler stores files and the job only once everything here has passed, so a bad
submission leaves nothing behind. Stage rules and env expansion are a grading run's
(broadway.environment, broadway.validation).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tornado.httputil import HTTPFile

from broadway import environment, schemas
from broadway.assignments import Assignment
from broadway.validation import StageCeilings, SubmissionError, check_stage_limits

# What the grader also puts at /tmp/exercise, where correctomatic's images read the submission.
EXERCISE_PATH = "/tmp/exercise"  # noqa: S108 - a path inside the grading container
DEFAULT_FILE_NAME = "submission"
FORM_FIELDS = (
    "assignment (or assignment_id), pipeline, image, params, param, work_id, callback_url (or callback), priority, file"
)
_FILE_NAME = re.compile(schemas.load("single_job")["$defs"]["file_name"]["pattern"])


@dataclass(frozen=True)
class Submission:
    """One student's submission as sent, checked for shape and size."""

    assignment: str | None = None
    pipeline: list[dict[str, Any]] | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    # The file sent as the form's `file` part: the grader also puts it at /tmp/exercise.
    exercise: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    work_id: str | None = None
    callback_url: str | None = None
    priority: int = 0
    # Orca's collation as "user:<id>" or "team:<id>"; None: nobody's in particular.
    collation: str | None = None

    def fingerprint(self) -> str:
        """Equal for equal submissions: a repeated Idempotency-Key must come with the same body."""
        canonical = {
            "assignment": self.assignment,
            "pipeline": self.pipeline,
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(self.files.items())},
            "exercise": self.exercise,
            "params": self.params,
            "work_id": self.work_id,
            "callback_url": self.callback_url,
            "priority": self.priority,
        }
        if self.collation is not None:  # absent from older fingerprints: keys stored before it still match
            canonical["collation"] = self.collation
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def from_json(body: Any, max_files_bytes: int) -> Submission:
    """A JSON submission: `assignment`, or an inline `pipeline`/`image`; `files` in base64."""
    try:
        schemas.validate("single_job", body)
    except schemas.SchemaError as e:
        raise SubmissionError(str(e)) from None
    recipes = [key for key in ("assignment", "pipeline", "image") if key in body]
    if len(recipes) != 1:
        raise SubmissionError("$: give exactly one of 'assignment', 'pipeline' or 'image'")
    files = {}
    for name, spec in body.get("files", {}).items():
        try:
            files[name] = base64.b64decode(spec["content"], validate=True)
        except (binascii.Error, ValueError):
            raise SubmissionError(f"$.files.{name}.content: not valid base64") from None
    check_total_size(files, max_files_bytes, "$.files")
    return Submission(
        assignment=body.get("assignment"),
        pipeline=body["pipeline"] if "pipeline" in body else ([{"image": body["image"]}] if "image" in body else None),
        files=files,
        params=body.get("params", {}),
        work_id=body.get("work_id"),
        callback_url=body.get("callback_url"),
        priority=body.get("priority", 0),
        collation=collation_text(body.get("collation")),
    )


def collation_text(collation: dict[str, str] | None) -> str | None:
    """A schema-checked `collation` object as the queue's collation key."""
    return f"{collation['type']}:{collation['id']}" if collation else None


def from_form(
    arguments: dict[str, list[bytes]], uploads: dict[str, list[HTTPFile]], max_files_bytes: int
) -> Submission:
    """A multipart (or urlencoded) submission: the same fields as JSON, as form fields.

    The submission is the `file` part; other file parts are kept under their file names.
    `params` may be a JSON object, and each `param` field a NAME=VALUE pair (correctomatic's way);
    `assignment_id` and `callback` are correctomatic's names for `assignment` and `callback_url`.
    """
    fields = {name: _text(name, values) for name, values in arguments.items() if name != "param"}
    params: dict[str, str] = {}
    if "params" in fields:
        try:
            params = json.loads(fields.pop("params"))
        except ValueError:
            raise SubmissionError("params: not a JSON object of NAME: value") from None
    for raw in arguments.get("param", []):
        pair = _decode("param", raw)
        name, equals, value = pair.partition("=")
        if not equals:
            raise SubmissionError(f"param: {pair[:80]!r} is not NAME=VALUE")
        params[name] = value
    body: dict[str, Any] = {"params": params}
    for name, alias in (("assignment", "assignment_id"), ("callback_url", "callback")):
        if name in fields or alias in fields:
            body[name] = fields.pop(name, None) or fields.pop(alias)
            fields.pop(alias, None)
    for name in ("work_id", "image"):
        if name in fields:
            body[name] = fields.pop(name)
    if "pipeline" in fields:
        try:
            body["pipeline"] = json.loads(fields.pop("pipeline"))
        except ValueError:
            raise SubmissionError("pipeline: not a JSON list of stages") from None
    if "priority" in fields:
        try:
            body["priority"] = int(fields.pop("priority"))
        except ValueError:
            raise SubmissionError("priority: not an integer") from None
    if fields:
        allowed = (
            "assignment (assignment_id), pipeline, image, params, param, work_id, callback_url (callback), priority"
        )
        raise SubmissionError(f"unknown form field(s): {', '.join(sorted(fields))} (allowed: {allowed}, file)")
    submission = from_json(body, max_files_bytes)
    files, exercise = _uploaded_files(uploads)
    check_total_size(files, max_files_bytes, "file")
    return dataclasses.replace(submission, files=files, exercise=exercise)


def _uploaded_files(uploads: dict[str, list[HTTPFile]]) -> tuple[dict[str, bytes], str | None]:
    files: dict[str, bytes] = {}
    exercise = None
    for part, entries in uploads.items():
        for upload in entries:
            # Browsers send a bare name; some clients send a Windows or Unix path: keep the last part.
            name = re.split(r"[\\/]", upload.filename or "")[-1] or (DEFAULT_FILE_NAME if part == "file" else part)
            if not _FILE_NAME.search(name):
                raise SubmissionError(f"{part}: the file name {name[:80]!r} is not allowed (letters, digits, . _ -)")
            if name in files:
                raise SubmissionError(f"{part}: two files named {name!r}")
            files[name] = upload.body
            if part == "file":
                if exercise is not None:
                    raise SubmissionError("file: send the submission as one `file` part (other parts for more files)")
                exercise = name
    return files, exercise


def check_total_size(files: dict[str, bytes], limit: int, where: str) -> None:
    total = sum(len(data) for data in files.values())
    if total > limit:
        raise SubmissionError(
            f"{where}: {total} bytes of files; the limit is {limit} bytes ({limit >> 20} MiB, --max-files-mb)"
        )


def plan_stages(
    submission: Submission, assignment: Assignment | None, job_id: str, ceilings: StageCeilings
) -> list[dict[str, Any]]:
    """The job's stages as graders receive them: the assignment's (or inline) pipeline, its limits
    as defaults, its env overlaid by the params, expanded like a run's."""
    if assignment is not None:
        pipeline, limits, env = assignment.pipeline, assignment.limits, dict(assignment.env)
        for name in submission.params:
            if name not in assignment.allowed_params:
                allowed = ", ".join(assignment.allowed_params) or "none"
                raise SubmissionError(
                    f"$.params.{name}: not a parameter of assignment {assignment.name!r} (allowed: {allowed})"
                )
    else:
        assert submission.pipeline is not None
        pipeline, limits, env = submission.pipeline, {}, {}
    for name in environment.RESERVED:
        if name in submission.params:
            raise SubmissionError(f"$.params.{name}: {name} is reserved and set by Broadway")
    env.update(submission.params)
    stages = [{**{k: v for k, v in limits.items() if k not in stage}, **stage} for stage in pipeline]
    for index, stage in enumerate(stages):
        check_stage_limits(stage, f"$.pipeline[{index}]", ceilings)
    # A single job belongs to no run: GRADING_RUN_ID is empty, GRADING_JOB_ID is its id.
    job_env = environment.job_environment(env, None, "", job_id)
    try:
        return environment.expand_pipeline(stages, job_env, "$.pipeline")
    except environment.ExpansionError as e:
        raise SubmissionError(f"{e} (give it in params)" if assignment else str(e)) from None


def _text(name: str, values: list[bytes]) -> str:
    if len(values) != 1:
        raise SubmissionError(f"{name}: given {len(values)} times")
    return _decode(name, values[0])


def _decode(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError(f"{name}: not valid UTF-8") from None
