"""End-to-end fixtures: the three CLIs as real processes, real store, real Docker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.docker_fixtures import busybox_image, docker_client, example_image  # noqa: F401 - fixtures
from tests.grader.conftest import start_grader  # noqa: F401 - fixture
from tests.helpers import CLIENT_TOKEN
from tests.processes import ROOT, child_env

EXAMPLE = ROOT / "examples" / "pipeline.json"


@dataclass
class Finished:
    code: int
    out: str
    err: str


async def start_run(*args: str, api_url: str = "http://127.0.0.1:9", token: str | None = CLIENT_TOKEN) -> Finished:
    """Run `python -m utils.start_run ARGS` to the end, as course staff would."""
    env = child_env(BROADWAY_API_URL=api_url)
    env.pop("BROADWAY_CLIENT_TOKEN", None)
    if token is not None:
        env["BROADWAY_CLIENT_TOKEN"] = token
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "utils.start_run", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    return Finished(done.returncode, done.stdout, done.stderr)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
