"""Environment expansion: what each stage's container is given.

A job's environment is the run's `env` overlaid by the student's entry, plus the reserved
variables. A stage's `env` is then applied on top, each value being
  ""        the job variable of the same name,
  "$NAME"   the job variable NAME,
  anything else, literally (values may contain "=" or "$" elsewhere).
A reference to a variable the job does not have is an error at submission, not a surprise in
the container.
"""

from __future__ import annotations

import re
from typing import Any

RESERVED = ("GRADING_RUN_ID", "GRADING_JOB_ID")

_REFERENCE = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


class ExpansionError(ValueError):
    pass


def job_environment(
    run_env: dict[str, str], student: dict[str, str] | None, run_id: str, job_id: str
) -> dict[str, str]:
    env = {**run_env, **(student or {})}
    env["GRADING_RUN_ID"] = run_id
    env["GRADING_JOB_ID"] = job_id
    return env


def expand_stage_env(stage_env: dict[str, str], job_env: dict[str, str], where: str) -> dict[str, str]:
    expanded = {}
    for name, value in stage_env.items():
        if value == "":
            source = name
        elif match := _REFERENCE.match(value):
            source = match.group(1)
        else:
            expanded[name] = value
            continue
        if source not in job_env:
            raise ExpansionError(
                f"{where}.env.{name}: refers to ${source}, which this job's environment does not define"
            )
        expanded[name] = job_env[source]
    return expanded


def expand_pipeline(pipeline: list[dict[str, Any]], job_env: dict[str, str], where: str) -> list[dict[str, Any]]:
    """The stages as the grader receives them: env is the job env overlaid by the expanded stage env.

    The reserved variables are applied last so that no stage can disguise which job it is.
    """
    stages = []
    for index, stage in enumerate(pipeline):
        place = f"{where}[{index}]"
        env = {**job_env, **expand_stage_env(stage.get("env", {}), job_env, place)}
        for name in RESERVED:
            env[name] = job_env[name]
        stages.append({**stage, "env": env})
    return stages


def check_reserved(config: dict[str, Any]) -> None:
    """Reject user variables that would shadow the reserved ones: they would be silently replaced."""
    places: list[tuple[str, dict[str, str]]] = [("$.env", config.get("env", {}))]
    places += [(f"$.students[{i}]", s) for i, s in enumerate(config.get("students", []))]
    for key in ("preprocessing_pipeline", "student_pipeline", "postprocessing_pipeline"):
        places += [(f"$.{key}[{i}].env", st.get("env", {})) for i, st in enumerate(config.get(key) or [])]
    for where, env in places:
        for name in RESERVED:
            if name in env:
                raise ExpansionError(f"{where}.{name}: {name} is reserved and set by Broadway")


def env_as_list(env: dict[str, str]) -> list[str]:
    """The NAME=value form that the original graders hand straight to Docker."""
    return [f"{name}={value}" for name, value in env.items()]
