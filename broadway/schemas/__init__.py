"""JSON Schema documents for request bodies, and validation with errors that name the place."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource


class SchemaError(ValueError):
    """A document does not match its schema; the message names where and what."""


@cache
def load(name: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(f"{name}.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _registry() -> Registry:
    """Every schema of the package under its $id, so one schema can $ref another's parts
    (an assignment's stages are exactly a grading run's)."""
    documents = [load(entry.name[: -len(".json")]) for entry in resources.files(__package__).iterdir()
                 if entry.name.endswith(".json")]  # fmt: skip
    return Registry().with_resources((doc["$id"], Resource.from_contents(doc)) for doc in documents)


@cache
def _validator(name: str) -> Draft202012Validator:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=_registry())


def location(path: Any) -> str:
    """A JSON path like $.students[2].NAME."""
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def describe(error: ValidationError) -> str:
    where = location(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and schema.get("additionalProperties") is False:
        allowed = ", ".join(sorted(schema.get("properties", {})))
        return f"{where}: {error.message} (allowed: {allowed})"
    # jsonschema quotes the offending value in full; a 10 MB value must not become a 10 MB error.
    message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
    return f"{where}: {message}"


def validate(name: str, document: Any) -> None:
    """Raise SchemaError naming the most relevant problem in the document, if there is one."""
    error = best_match(_validator(name).iter_errors(document))
    if error is not None:
        raise SchemaError(describe(error))
