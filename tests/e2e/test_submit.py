"""broadway-submit as course staff use it: a graded submission, a failing one, a bad assignment."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from broadway.server import ApiService
from tests.e2e.conftest import Finished, write
from tests.grader.conftest import StartGrader
from tests.helpers import CLIENT_TOKEN, ApiClient, stage
from tests.processes import ROOT, child_env

# Grades by what the student's files say; a lone file is also at /tmp/exercise (correctomatic's place).
GRADER_SCRIPT = """\
if cat /job/files/*.c | grep -q correct; then
  echo '{"success": true, "grade": 10, "comments": ["all tests pass", "nice"]}'
elif [ -f /tmp/exercise ]; then
  echo '{"success": false, "error": "test 3 failed"}'
else
  echo '{"success": false, "error": "no /tmp/exercise"}'
fi
"""


async def submit(*args: str, api_url: str) -> Finished:
    """Run `python -m utils.submit ARGS` to the end."""
    env = child_env(BROADWAY_API_URL=api_url, BROADWAY_CLIENT_TOKEN=CLIENT_TOKEN)
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "utils.submit", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    return Finished(done.returncode, done.stdout, done.stderr)


async def create_assignment(api: ApiClient, image: str) -> None:
    body = {"name": "hw1", "pipeline": [stage(image, entrypoint=["sh", "-c", GRADER_SCRIPT])]}
    created = await api.request("POST", "/api/v1/assignments", json_body=body, auth=True)
    assert created.status == 201, created.body


async def test_wait_prints_grade_and_comments_and_a_failing_job_exits_1(
    tmp_path: Path, api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    await create_assignment(api, busybox_image)
    grader = start_grader(api_service.url)
    good = write(tmp_path / "good.c", "// correct\n")
    (tmp_path / "src").mkdir()
    write(tmp_path / "src" / "util.h", "#pragma once\n")
    done = await submit("--assignment", "hw1", str(good), str(tmp_path / "src"), "--wait", api_url=api_service.url)
    assert done.code == 0, (done, grader.log()[-3000:])
    lines = done.out.splitlines()
    assert lines[0].endswith(": succeeded")
    assert "grade: 10" in lines and "  - all tests pass" in lines and "  - nice" in lines
    assert "Traceback" not in done.err

    bad = write(tmp_path / "bad.c", "// wrong\n")
    failed = await submit("--assignment", "hw1", str(bad), "--wait", "--interval", "0.2", api_url=api_service.url)
    assert failed.code == 1, failed
    assert failed.out.splitlines()[0].endswith(": failed") and "error: test 3 failed" in failed.out


async def test_a_bad_assignment_name_exits_2_with_one_line(tmp_path: Path, api_service: ApiService) -> None:
    file = write(tmp_path / "main.c", "int x;\n")
    done = await submit("--assignment", "no-such-hw", str(file), "--wait", api_url=api_service.url)
    assert done.code == 2, done
    lines = [line for line in done.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("broadway-submit: "), done.err
    assert "no-such-hw" in lines[0] and "Traceback" not in done.err
    missing = await submit("--assignment", "hw1", str(tmp_path / "nope.c"), api_url=api_service.url)
    assert missing.code == 2 and "no such file" in missing.err
