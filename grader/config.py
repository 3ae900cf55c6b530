"""The grader's settings: every tunable lives in one frozen dataclass."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broadway.sizes import parse_size

__all__ = ["DEFAULT_WORK_DIR", "DOCKER_MIN_MEMORY", "GraderConfig", "Limits", "StageLimits", "parse_size"]

# Not under /tmp: another local user could plant a symlink there before the grader starts.
DEFAULT_WORK_DIR = Path.home() / ".broadway-grader"
# Docker refuses a smaller memory limit ("Minimum memory limit allowed is 6MB").
DOCKER_MIN_MEMORY = 6 << 20


@dataclass(frozen=True)
class Limits:
    """The operator's ceilings for every stage. A stage may ask for a lower `memory` or `timeout`,
    never a higher one (see stage_limits); everything else applies as it is."""

    memory_bytes: int = 1 << 30
    cpus: float = 1.0
    pids: int = 256
    timeout_s: float = 30.0
    max_output_bytes: int = 1 << 20
    job_dir_bytes: int = 1 << 30
    # /tmp in the container is a tmpfs of this size: without it, writes there land on the
    # engine's disk with no bound. Its pages count against the stage's memory too.
    tmp_bytes: int = 64 << 20

    def stage_limits(self, stage: dict[str, Any]) -> StageLimits:
        """What a stage actually gets: its own `memory`/`timeout` where lower than the ceilings.
        A value that is missing gives the ceiling; one that is not positive or not readable
        gives the ceiling too (never "no limit", which is what Docker makes of memory 0)."""
        clamped: list[dict[str, Any]] = []
        memory = self.memory_bytes
        asked_memory = stage.get("memory")
        if asked_memory is not None:
            try:
                wanted = parse_size(asked_memory) if not isinstance(asked_memory, bool) else 0
            except ValueError:
                wanted = 0
            if wanted <= 0:
                clamped.append(_note("memory", asked_memory, memory, "not a positive size; the grader's --memory"))
            elif wanted > memory:
                clamped.append(_note("memory", asked_memory, memory, "above the grader's --memory"))
            elif wanted < DOCKER_MIN_MEMORY:
                memory = DOCKER_MIN_MEMORY
                clamped.append(_note("memory", asked_memory, memory, "below Docker's minimum"))
            else:
                memory = wanted
        timeout = self.timeout_s
        asked_timeout = stage.get("timeout")
        if asked_timeout is not None:
            try:
                seconds = float(asked_timeout) if not isinstance(asked_timeout, bool) else 0.0
            except (TypeError, ValueError):
                seconds = 0.0
            if not (math.isfinite(seconds) and seconds > 0):
                clamped.append(
                    _note("timeout", asked_timeout, timeout, "not a positive number; the grader's --timeout")
                )
            elif seconds > timeout:
                clamped.append(_note("timeout", asked_timeout, timeout, "above the grader's --timeout"))
            else:
                timeout = seconds
        return StageLimits(memory_bytes=memory, timeout_s=timeout, clamped=clamped)

    def report(self, given: StageLimits) -> dict[str, Any]:
        """The limits a stage ran under, as its result shows them (sizes in bytes, times in seconds)."""
        return {
            "memory": given.memory_bytes,
            "timeout": given.timeout_s,
            "cpus": self.cpus,
            "pids": self.pids,
            "max_output": self.max_output_bytes,
            "tmp_size": self.tmp_bytes,
            "job_dir_size": self.job_dir_bytes,
        }


@dataclass(frozen=True)
class StageLimits:
    """A stage's own memory and timeout after the ceilings; `clamped` says what was changed and why."""

    memory_bytes: int
    timeout_s: float
    clamped: list[dict[str, Any]] = field(default_factory=list)


def _note(limit: str, asked: Any, given: float, reason: str) -> dict[str, Any]:
    # `asked` stays as the stage wrote it ("2g", 90): that is what its author will look for.
    return {"limit": limit, "asked": asked, "given": given, "reason": reason}


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
    # A single job's files, fetched before its first stage: at most this much in all, in this long.
    max_files_bytes: int = 64 << 20
    files_timeout_s: float = 120.0
    # Grader images (grader/image_builder.py, grader/image_cache.py): `build` (--build) also
    # claims image builds, each at most build_timeout_s long and build_memory_bytes large; images
    # this grader downloads and loads are kept up to image_cache_bytes in all (least recently
    # used evicted first).
    build: bool = False
    build_timeout_s: float = 600.0
    build_memory_bytes: int = 2 << 30
    image_cache_bytes: int = 20 << 30

    def __post_init__(self) -> None:
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"--api-url must start with http:// or https://, got {self.api_url!r}")
        if not self.token:
            raise ValueError("a cluster token is required (--token or BROADWAY_CLUSTER_TOKEN)")
        if self.slots < 1:
            raise ValueError("--slots must be at least 1")
        limits = self.limits
        if not (limits.timeout_s > 0 and math.isfinite(limits.timeout_s)) or not limits.cpus > 0 or limits.pids < 1:
            raise ValueError("--timeout, --cpus and --pids must be positive")
        if limits.memory_bytes < DOCKER_MIN_MEMORY:
            raise ValueError("--memory must be at least 6m (Docker's minimum)")
        if limits.job_dir_bytes < 1:
            raise ValueError("--job-dir-size must be positive")
        if limits.tmp_bytes < 1 << 20:
            raise ValueError("--tmp-size must be at least 1m")
        if self.max_files_bytes < 0:
            raise ValueError("--max-files must not be negative")
        if not (self.build_timeout_s > 0 and math.isfinite(self.build_timeout_s)):
            raise ValueError("--build-timeout must be positive")
        if self.build_memory_bytes < DOCKER_MIN_MEMORY:
            raise ValueError("--build-memory must be at least 6m (Docker's minimum)")
        if self.image_cache_bytes < 0:
            raise ValueError("--image-cache-gb must not be negative")


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """The grader-image flags (--build, --build-timeout, --build-memory, --image-cache-gb)."""
    images = parser.add_argument_group(
        "grader images",
        "Images built by the API's graders on request (POST /api/v1/grader_images), tagged "
        "broadway-image:<sha>. A stage naming such an image (or the bare sha) that this grader lacks "
        "is downloaded from the API and loaded first.",
    )
    images.add_argument("--build", action="store_true",
                        help="also build grader images the API queues (legacy builder)")  # fmt: skip
    images.add_argument("--build-timeout", type=float, default=600.0,
                        help="wall-clock seconds a build may take, then it fails (default 600)")  # fmt: skip
    images.add_argument("--build-memory", default="2g",
                        help="memory of each build step's container (default 2g)")  # fmt: skip
    images.add_argument("--image-cache-gb", type=float, default=20.0,
                        help="most the images this grader downloaded may take on disk, least recently used "
                        "evicted first (default 20)")  # fmt: skip


def image_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The GraderConfig fields add_image_arguments's flags give (ValueError for a bad size)."""
    return {
        "build": bool(args.build),
        "build_timeout_s": float(args.build_timeout),
        "build_memory_bytes": parse_size(args.build_memory),
        "image_cache_bytes": int(float(args.image_cache_gb) * (1 << 30)),
    }
