"""Checking Orca's GradingJobConfig (the body of PUT /api/v1/grading_queue) before anything is stored.

Store-free: the JSON Schema (schemas/orca_grading_job.json, Orca's own field names and types) and
then the script's graph (broadway/orca/script.py). Every problem found is listed, as Orca answers
400 {"errors": [...]}. `priority` is Orca's release delay in milliseconds: Orca releases a job at
now + priority (orchestrator/packages/db/src/shared/create-or-update-job.ts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from broadway import schemas
from broadway.orca.script import Script, ScriptError, parse_script

SCHEMA = "orca_grading_job"
MAX_ERRORS = 20

# Orca's archive MIME types (worker/.../mime_types.py), plus the names other tools give them.
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed"})
TAR_TYPES = frozenset({"application/x-tar", "application/tar"})
TAR_GZ_TYPES = frozenset({"application/x-gtar", "application/x-compressed-tar", "application/tar+gzip"})
GZIP_TYPES = frozenset({"application/gzip", "application/x-gzip"})
# Orca's worker unpacks 7z with the 7z tool; this grader does not: told at submission, not in a result.
UNSUPPORTED_TYPES = frozenset({"application/x-7z-compressed"})


class OrcaConfigError(ValueError):
    """The config is invalid; `errors` lists each problem, for Orca's 400 {"errors": [...]}."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Collation:
    type: Literal["user", "team"]
    id: str


@dataclass(frozen=True)
class CodeFile:
    url: str
    mime_type: str
    should_replace_paths: bool

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "mime_type": self.mime_type, "should_replace_paths": self.should_replace_paths}


@dataclass(frozen=True)
class GradingJobConfig:
    key: str
    collation: Collation
    metadata_table: MappingProxyType[str, str]
    files: MappingProxyType[str, CodeFile]
    # Milliseconds, as Orca reads it.
    priority: float
    # As submitted (the grader parses it again into `parsed_script`'s graph).
    script: tuple[dict[str, Any], ...]
    parsed_script: Script
    response_url: str
    container_response_url: str | None
    grader_image_sha: str

    @property
    def release_delay_s(self) -> float:
        return self.priority / 1000.0

    def orca_stage_fields(self) -> dict[str, Any]:
        """The `orca` part of the job's one stage, as the grader reads it (grader/orca_runner.py)."""
        return {
            "key": self.key,
            "script": list(self.script),
            "files": {name: file.to_json() for name, file in self.files.items()},
            "metadata_table": dict(self.metadata_table),
        }


def parse_grading_job(body: Any) -> GradingJobConfig:
    """The config, checked; OrcaConfigError listing every problem found."""
    errors = schema_errors(body)
    if errors:
        raise OrcaConfigError(errors)
    for name, file in body["files"].items():
        if file["mime_type"].lower() in UNSUPPORTED_TYPES:
            errors.append(f"$.files.{name}.mime_type: {file['mime_type']} archives are not unpacked by this grader")
    try:
        parsed = parse_script(body["script"])
    except ScriptError as exc:
        errors.extend(exc.errors)
    if errors:
        raise OrcaConfigError(errors[:MAX_ERRORS])
    return GradingJobConfig(
        key=body["key"],
        collation=Collation(type=body["collation"]["type"], id=body["collation"]["id"]),
        metadata_table=MappingProxyType(dict(body["metadata_table"])),
        files=MappingProxyType(
            {
                name: CodeFile(url=f["url"], mime_type=f["mime_type"], should_replace_paths=f["should_replace_paths"])
                for name, f in body["files"].items()
            }
        ),
        priority=body["priority"],
        script=tuple(body["script"]),
        parsed_script=parsed,
        response_url=body["response_url"],
        container_response_url=body.get("container_response_url"),
        grader_image_sha=body["grader_image_sha"],
    )


def schema_errors(body: Any) -> list[str]:
    """Every schema problem (not just the first: Orca lists them all), most relevant first."""
    found: list[ValidationError] = sorted(
        _validator().iter_errors(body), key=lambda e: schemas.location(e.absolute_path)
    )
    return [_describe(error) for error in found[:MAX_ERRORS]]


def _describe(error: ValidationError) -> str:
    # A regex quoted back is no help to an LMS developer: say what the pattern stands for.
    if error.validator == "pattern":
        where = schemas.location(error.absolute_path)
        if error.schema_path and "propertyNames" in error.schema_path:
            return f"{where}: file name {error.instance!r} must be one path segment (no '/', not '.' or '..')"
        return f"{where}: must be an http:// or https:// URL"
    return schemas.describe(error)


@cache
def _validator() -> Draft202012Validator:
    schema = schemas.load(SCHEMA)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)
