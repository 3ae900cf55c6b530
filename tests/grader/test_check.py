"""`broadway-grader --check`: a sysadmin's one-command diagnosis of a grading VM."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from broadway.server import ApiService
from tests.processes import ROOT, child_env


async def check(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "grader", "--check", *args],
        env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_check_passes_with_docker_and_a_live_api(api_service: ApiService, tmp_path: Path) -> None:
    done = await check("--api-url", api_service.url, "--work-dir", str(tmp_path / "w"))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("docker: ok (engine ")
    assert lines[1].startswith("api: ok (store ok")
    assert lines[2].startswith("work dir: ok")


async def test_check_names_what_is_wrong(tmp_path: Path) -> None:
    done = await check("--api-url", "http://127.0.0.1:9", "--work-dir", str(tmp_path / "w"))
    assert done.returncode == 1
    assert "api: FAILED, cannot reach http://127.0.0.1:9/api/v1/health" in done.stdout
    assert "Traceback" not in done.stderr
