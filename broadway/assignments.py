"""Assignments: saved grading recipes (pipeline, env, allowed params, limits) that single
submissions name instead of sending a pipeline each time.

The rules are a grading run's: the same stage schema (assignment.json refers to
grading_run.json's definitions), the same env expansion (broadway.environment) and the same
operator ceilings (broadway.validation). This module checks and normalises a recipe; the store
keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broadway import environment, schemas
from broadway.validation import StageCeilings, SubmissionError, check_stage_limits

# Set by Broadway in every single job's environment; a recipe may refer to them, not define them.
RESERVED = environment.RESERVED


@dataclass(frozen=True)
class Assignment:
    name: str
    course: str
    pipeline: list[dict[str, Any]]
    env: dict[str, str] = field(default_factory=dict)
    allowed_params: list[str] = field(default_factory=list)
    limits: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def public(self) -> dict[str, Any]:
        """The assignment as the API shows it."""
        return {
            "name": self.name,
            "pipeline": self.pipeline,
            "env": self.env,
            "allowed_params": self.allowed_params,
            "limits": self.limits,
            "description": self.description,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Recipe:
    """A checked assignment body, ready to store."""

    name: str
    pipeline: list[dict[str, Any]]
    env: dict[str, str]
    allowed_params: list[str]
    limits: dict[str, Any]
    description: str


def check_recipe(body: Any, ceilings: StageCeilings) -> Recipe:
    """Validate an assignment body; SubmissionError names the field and the problem."""
    try:
        schemas.validate("assignment", body)
    except schemas.SchemaError as e:
        raise SubmissionError(str(e)) from None
    if ("pipeline" in body) == ("image" in body):
        raise SubmissionError(
            "$: give either 'pipeline' (a list of stages) or 'image' (one stage), not both or neither"
        )
    pipeline = body["pipeline"] if "pipeline" in body else [{"image": body["image"]}]
    env: dict[str, str] = body.get("env", {})
    allowed: list[str] = body.get("allowed_params", [])
    limits: dict[str, Any] = body.get("limits", {})
    for name in RESERVED:
        if name in env:
            raise SubmissionError(f"$.env.{name}: {name} is reserved and set by Broadway")
        if name in allowed:
            raise SubmissionError(f"$.allowed_params: {name} is reserved and set by Broadway")
    check_stage_limits(limits, "$.limits", ceilings)
    known = {**{name: "" for name in allowed}, **env, **{name: "" for name in RESERVED}}
    for index, stage in enumerate(pipeline):
        where = f"$.pipeline[{index}]"
        check_stage_limits(stage, where, ceilings)
        try:
            environment.expand_stage_env(stage.get("env", {}), known, where)
        except environment.ExpansionError as e:
            raise SubmissionError(f"{e} (nor is it in allowed_params)") from None
    return Recipe(body["name"], pipeline, env, allowed, limits, body.get("description", ""))
