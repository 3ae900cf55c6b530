"""The grader's settings: every tunable lives in one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from broadway.sizes import parse_size

__all__ = ["DEFAULT_WORK_DIR", "GraderConfig", "Limits", "parse_size"]

# Not under /tmp: another local user could plant a symlink there before the grader starts.
DEFAULT_WORK_DIR = Path.home() / ".broadway-grader"


@dataclass(frozen=True)
class Limits:
    """Isolation applied to every stage; a stage's own `timeout` and `memory` override these two."""

    memory_bytes: int = 1 << 30
    cpus: float = 1.0
    pids: int = 256
    timeout_s: float = 30.0
    max_output_bytes: int = 1 << 20
    job_dir_bytes: int = 1 << 30


@dataclass(frozen=True)
class GraderConfig:
    api_url: str
    token: str
    slots: int = 1
    name: str = ""
    work_dir: Path = DEFAULT_WORK_DIR
    limits: Limits = field(default_factory=Limits)
    # Long-poll length: an idle grader holds one request open this long, so a queued job is
    # picked up at once with no request storm.
    poll_wait_s: float = 20.0
    # Retry pacing while the API is unreachable: exponential from the first value, capped.
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"--api-url must start with http:// or https://, got {self.api_url!r}")
        if not self.token:
            raise ValueError("a cluster token is required (--token or BROADWAY_CLUSTER_TOKEN)")
        if self.slots < 1:
            raise ValueError("--slots must be at least 1")
        if self.limits.timeout_s <= 0 or self.limits.cpus <= 0 or self.limits.pids < 1:
            raise ValueError("--timeout, --cpus and --pids must be positive")
        if self.limits.memory_bytes < 4 << 20:
            raise ValueError("--memory must be at least 4m (Docker's minimum)")
