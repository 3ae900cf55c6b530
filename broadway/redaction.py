"""Credentials out of log lines: every path that logs a request goes through here."""

from __future__ import annotations

import re

# Query arguments whose values are credentials.
_SECRET_ARGS = re.compile(r"((?:^|[?&])(?:token|access_token|worker_id|api_key|x-api-key)=)[^&]*", re.IGNORECASE)


def redact(uri: str) -> str:
    """The URI with credential values replaced, fit for a log line."""
    return _SECRET_ARGS.sub(r"\1[redacted]", uri)
