"""Logging set-up: the text format, or --log-format json (one JSON object a line).

A JSON line has time, level, logger, message, and where known run_id, job_id and worker (the
worker's *name*: its id is a credential and is never logged). Those come from the record's
`extra` (`log.info("...", extra=log_fields(job_id=...))`) or from the context set with
`log_context(...)` around a request. Secrets are redacted as in the text format: URI query
credentials (token=, worker_id=...), bearer tokens, and fields named like credentials.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from broadway.redaction import redact

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a JSON line carries when the record (or the context) has them.
CONTEXT_FIELDS = ("run_id", "job_id", "worker", "course", "http")
# Never written, whatever a caller passes in `extra`.
_SECRET_FIELDS = frozenset({"worker_id", "token", "cluster_token", "client_token", "authorization", "secret"})
_BEARER = re.compile(r"(Bearer\s+)[^\s\"',;]+", re.IGNORECASE)

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("broadway_log_context", default={})  # noqa: B039


def scrub(text: str) -> str:
    """Text fit for a log line: URI credentials and bearer tokens replaced."""
    return _BEARER.sub(r"\1[redacted]", redact(text))


def log_fields(**fields: Any) -> dict[str, Any]:
    """`extra` for a log call: the known context fields that are set (a worker by name only)."""
    return {k: v for k, v in fields.items() if k in CONTEXT_FIELDS and v is not None}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within the block (and the tasks it starts), every log line carries these fields."""
    token = _context.set(_context.get() | log_fields(**fields))
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for key, value in _context.get().items():
            line[key] = value
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        for key in list(line):
            if key.lower() in _SECRET_FIELDS:
                del line[key]
        if record.exc_info:
            line["exception"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = scrub(self.formatStack(record.stack_info))
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str = "text", stream: IO[str] | None = None) -> None:
    """The root logger at `level`, writing `log_format` ("text" or "json") to stream (stderr)."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
