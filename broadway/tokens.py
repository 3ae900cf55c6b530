"""Secrets: generation, constant-time comparison, and the generated tokens kept in the data dir."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


def new_secret() -> str:
    """An unguessable hex string (256 bits)."""
    return secrets.token_hex(32)


def digest(secret: str) -> str:
    """What the store keeps instead of a secret; also safe to show in logs in short form."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal a token prefix."""
    if given is None:
        return False
    return hmac.compare_digest(digest(given), digest(expected))


@dataclass(frozen=True)
class Tokens:
    cluster: str
    client: str
    # Names of the tokens that were not configured but generated (now or on an earlier
    # start) and kept in the data dir: the operator has to be shown these.
    unconfigured: frozenset[str]
    # The secret callbacks are signed with; receivers need it too. None only where Tokens are
    # built by hand (tests): the API then falls back to Config.callback_secret, or the data dir.
    callback: str | None = None


def load_or_create(data_dir: Path, cluster: str | None, client: str | None, callback: str | None = None) -> Tokens:
    """Use the configured tokens; otherwise the ones kept in data_dir, generating them on first start.

    The callback signing secret is kept the same way, so that every API process over one data
    dir, and every restart, signs with the secret the receivers were given.
    """
    path = data_dir / "tokens.json"
    kept: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    chosen = {"cluster": cluster, "client": client, "callback": callback}
    unconfigured = frozenset(name for name, value in chosen.items() if value is None)
    for name in unconfigured:
        chosen[name] = kept.get(name) or new_secret()
    updated = {**kept, **{name: chosen[name] for name in unconfigured}}
    if updated != kept:
        data_dir.mkdir(parents=True, exist_ok=True)
        _write_private(path, json.dumps(updated))
    return Tokens(
        cluster=str(chosen["cluster"]), client=str(chosen["client"]), unconfigured=unconfigured,
        callback=str(chosen["callback"]),
    )  # fmt: skip


def load_or_create_callback_secret(data_dir: Path) -> str:
    """The callback signing secret kept in data_dir, generated on first use (for services built
    from Tokens that carry none)."""
    path = data_dir / "tokens.json"
    kept: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if not kept.get("callback"):
        kept["callback"] = new_secret()
        data_dir.mkdir(parents=True, exist_ok=True)
        _write_private(path, json.dumps(kept))
    return kept["callback"]


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
