"""Checking a grading run before anything is stored, and planning its jobs.

Store-free on purpose (no pymongo, no bson): `start_run` checks a file locally with exactly the
server's rules by importing this module, and the scheduler turns the plan into job documents.
Checks: the JSON Schema, reserved variable names, every `$NAME` reference of every stage for
every student, and the operator's ceilings on what a stage may ask for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broadway import environment, schemas
from broadway.models import JobKind
from broadway.sizes import parse_size


class SubmissionError(ValueError):
    """The run config is invalid; the message says where and why."""


@dataclass(frozen=True)
class StageCeilings:
    """The most a stage may ask for (the API's --max-stage-timeout / --max-stage-memory).
    None: no ceiling beyond the schema's own bounds."""

    max_timeout_s: float | None = None
    max_memory_bytes: int | None = None


NO_CEILINGS = StageCeilings()
# Docker refuses a smaller memory limit ("Minimum memory limit allowed is 6MB").
MIN_STAGE_MEMORY = 6 << 20


@dataclass(frozen=True)
class PlannedJob:
    """One job of a run as it will be stored: its stages already expanded."""

    job_id: str
    kind: JobKind
    seq: int
    stages: list[dict[str, Any]]
    student: dict[str, str] | None


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    jobs: list[PlannedJob]
    n_students: int
    pre_job_id: str | None
    post_job_id: str | None


PIPELINES = ("preprocessing_pipeline", "student_pipeline", "postprocessing_pipeline")


def check_config(config: Any, ceilings: StageCeilings = NO_CEILINGS) -> None:
    """Raise SubmissionError for a config that does not match the schema or the ceilings."""
    try:
        schemas.validate("grading_run", config)
        environment.check_reserved(config)
    except (schemas.SchemaError, environment.ExpansionError) as e:
        raise SubmissionError(str(e)) from None
    for key in PIPELINES:
        for index, stage in enumerate(config.get(key) or []):
            check_stage_limits(stage, f"$.{key}[{index}]", ceilings)


def check_stage_limits(stage: dict[str, Any], where: str, ceilings: StageCeilings) -> None:
    """A stage's own `timeout` and `memory`: positive, readable, and within the API's ceilings.

    The grader clamps them to its own ceilings too, but a value that cannot run as asked is the
    config author's mistake and is told at submission, not found in a result hours later.
    """
    if "timeout" in stage:
        timeout = stage["timeout"]
        # JSON allows no NaN, but Python's parser accepts it, and NaN passes every comparison the schema makes.
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (math.isfinite(timeout) and timeout > 0)
        ):
            raise SubmissionError(f"{where}.timeout: must be a positive number of seconds, got {_shown(timeout)}")
        if ceilings.max_timeout_s is not None and timeout > ceilings.max_timeout_s:
            raise SubmissionError(
                f"{where}.timeout: {timeout:g} s is above this API's ceiling of {ceilings.max_timeout_s:g} s"
                " (--max-stage-timeout)"
            )
    if "memory" in stage:
        memory = stage["memory"]
        try:
            if isinstance(memory, bool) or not isinstance(memory, int | str):
                raise ValueError
            size = parse_size(memory)
        except ValueError:
            raise SubmissionError(
                f"{where}.memory: not a size: {_shown(memory)} (expected bytes, or a number with k, m or g: 512m)"
            ) from None
        if size <= 0:
            raise SubmissionError(f"{where}.memory: must be positive, got {_shown(memory)} (0 would mean no limit)")
        if size < MIN_STAGE_MEMORY:
            raise SubmissionError(f"{where}.memory: {_shown(memory)} is below Docker's minimum of 6m")
        if ceilings.max_memory_bytes is not None and size > ceilings.max_memory_bytes:
            raise SubmissionError(
                f"{where}.memory: {_shown(memory)} is above this API's ceiling of {_size(ceilings.max_memory_bytes)}"
                " (--max-stage-memory)"
            )


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _size(n: int) -> str:
    for unit, shift in (("g", 30), ("m", 20), ("k", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n} bytes"


def plan_run(config: Any, run_id: str, new_job_id: Callable[[], str], ceilings: StageCeilings = NO_CEILINGS) -> RunPlan:
    """Validate a run config and expand every job's stages. Pure CPU: run it off the event loop.

    `new_job_id` makes job ids (the reserved GRADING_JOB_ID is part of each stage's env), so the
    caller decides what an id is; start_run passes placeholders.
    """
    check_config(config, ceilings)
    run_env = config.get("env", {})
    jobs: list[PlannedJob] = []

    def add(kind: JobKind, seq: int, pipeline: list[dict[str, Any]], where: str, student: dict[str, str] | None) -> str:
        job_id = new_job_id()
        job_env = environment.job_environment(run_env, student, run_id, job_id)
        try:
            stages = environment.expand_pipeline(pipeline, job_env, where)
        except environment.ExpansionError as e:
            context = f" (for $.students[{seq}])" if kind is JobKind.STUDENT else ""
            raise SubmissionError(f"{e}{context}") from None
        jobs.append(PlannedJob(job_id, kind, seq, stages, student))
        return job_id

    pre = config.get("preprocessing_pipeline") or None
    post = config.get("postprocessing_pipeline") or None
    pre_id = add(JobKind.PRE, 0, pre, "$.preprocessing_pipeline", None) if pre else None
    for i, student in enumerate(config["students"]):
        add(JobKind.STUDENT, i, config["student_pipeline"], "$.student_pipeline", student)
    post_id = add(JobKind.POST, 0, post, "$.postprocessing_pipeline", None) if post else None
    return RunPlan(run_id, jobs, len(config["students"]), pre_id, post_id)


def placeholder_ids() -> Callable[[], str]:
    """Ids for a local check (start_run): unique, 24 hex digits like the server's."""
    counter = iter(range(1, 1 << 62))
    return lambda: f"{next(counter):024x}"
