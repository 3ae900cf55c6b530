"""Sizes as people write them (`512m`, `1g`, `64KiB`), shared by the API's checks and the grader's limits."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*([0-9]+)\s*([bkmg]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(value: str | int) -> int:
    """Bytes from an int or a string such as `512m`, `1g`, `64KiB`; ValueError when malformed."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r} (expected bytes or a number with k, m or g)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]
