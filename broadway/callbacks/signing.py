"""Signing callbacks, and the check a receiver runs on them (standard library only).

Every callback carries `Broadway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
The timestamp is inside the signed text, so a captured request cannot be replayed later with a new
`t`; a receiver refuses signatures older than a few minutes, and drops repeats within that window
by the `Broadway-Delivery` id (which is also how it drops Broadway's own at-least-once repeats).

A receiver written in Python can use `verify` directly (`from broadway.callbacks.signing import
verify`); this module imports nothing from the rest of Broadway, so it may also be copied.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Broadway-Signature"
DELIVERY_HEADER = "Broadway-Delivery"
# How old a signature `verify` still accepts by default (seconds), either way of clock skew.
DEFAULT_TOLERANCE_S = 300.0


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The Broadway-Signature header value for this body, signed now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_mac(secret, t, body)}"


def verify(
    secret: str, body: bytes, header: str | None, tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None
) -> bool:
    """True if `header` (the Broadway-Signature value) signs exactly `body` (the raw request bytes,
    before any JSON parsing) with `secret`, and was made within `tolerance_s` of now.

    Several `v1=` entries are accepted (any one matching suffices), so that a sender may sign
    with an old and a new secret while the secret is being rotated.
    """
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body)
    # compare_digest on every candidate: constant time, and no early exit revealing which matched.
    matches = [hmac.compare_digest(expected.encode(), c.encode("ascii", "replace")) for c in candidates]
    return any(matches)
