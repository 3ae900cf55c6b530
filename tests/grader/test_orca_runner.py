"""Orca jobs in real Docker: files fetched from a real HTTP server on loopback and unpacked under
/job, the grading script run command by command in one container, and Orca's GradingJobResult."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from grader.config import Limits
from grader.executor import LABEL, Executor, JobOutcome
from tests.file_server import serving
from tests.helpers import eventually
from utils.images import build_image

pytestmark = pytest.mark.usefixtures("busybox_image")


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """An LMS's file store on loopback: a zip, a tar.gz, a gzip and a plain file."""
    root = tmp_path / "served"
    root.mkdir()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("src/Main.txt", "student code\n")
        z.writestr("files.list", "$EXTRACTED/submission/src/Main.txt\n")
    (root / "submission.zip").write_bytes(archive.getvalue())
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as t:
        data = b"#!/bin/sh\necho tests pass\n"
        info = tarfile.TarInfo("tests/run.sh")
        info.size, info.mode = len(data), 0o755
        t.addfile(info, io.BytesIO(data))
    (root / "tests.tar.gz").write_bytes(archive.getvalue())
    (root / "notes.txt.gz").write_bytes(gzip.compress(b"gzipped notes\n"))
    (root / "README.txt").write_text("plain file\n")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../escape.txt", "out")
    (root / "evil.zip").write_bytes(archive.getvalue())
    with serving(root) as url:
        yield url


@pytest.fixture
def executor(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Executor]:
    instance = f"orca-test-{uuid.uuid4().hex[:8]}"
    ex = Executor(docker_client, Limits(timeout_s=30), tmp_path / "work", instance)
    yield ex
    left = docker_client.containers.list(all=True, filters={"label": f"{LABEL}={instance}"}, sparse=True)
    assert left == [], "the Orca job left its container behind"
    assert not list((tmp_path / "work" / "jobs").glob("*")), "the job directory was left behind"


def orca_job(
    image: str, script: list[dict[str, Any]], files: dict[str, Any] | None = None, **stage: Any
) -> dict[str, Any]:
    orca = {"key": '{"sub": 17}', "script": script, "files": files or {}, "metadata_table": {}}
    return {"job_id": uuid.uuid4().hex, "kind": "single", "stages": [{"image": image, "orca": orca, **stage}]}


def file_info(url: str, mime: str, replace: bool = False) -> dict[str, Any]:
    return {"url": url, "mime_type": mime, "should_replace_paths": replace}


def reported(outcome: JobOutcome) -> dict[str, Any]:
    """The GradingJobResult as the API finds it in the reported result JSON."""
    result: dict[str, Any] = json.loads(outcome.result_json())["orca_result"]
    return result


def test_files_are_unpacked_by_type_and_the_script_output_is_the_result(
    executor: Executor, busybox_image: str, file_server: str
) -> None:
    files = {
        "submission": file_info(f"{file_server}/submission.zip", "application/zip", replace=True),
        "tests": file_info(f"{file_server}/tests.tar.gz", "application/x-gtar"),
        "notes": file_info(f"{file_server}/notes.txt.gz", "application/gzip"),
        "readme": file_info(f"{file_server}/README.txt", "text/plain"),
    }
    script = [
        {
            "cmd": [
                "cat",
                "$EXTRACTED/submission/src/Main.txt",
                "$EXTRACTED/notes/notes.txt",
                "$EXTRACTED/readme/README.txt",
            ]
        },
        # should_replace_paths: the placeholder inside the file became the real path.
        {"cmd": "grep -qx /job/extracted/submission/src/Main.txt $EXTRACTED/submission/files.list && echo replaced"},
        {"cmd": "ls $DOWNLOADED/submission", "on_complete": "next"},
        {"cmd": ["sh", "run.sh"], "working_dir": "$EXTRACTED/tests/tests", "on_complete": "output"},
    ]
    outcome = executor.run_job(orca_job(busybox_image, script, files))
    result = reported(outcome)
    assert outcome.success and outcome.error is None, result
    assert result["key"] == '{"sub": 17}' and result["errors"] == []
    stdouts = [r["stdout"] for r in result["shell_responses"]]
    assert stdouts == ["student code\ngzipped notes\nplain file", "replaced", "submission.zip", "tests pass"]
    assert result["output"] == "tests pass"  # the last command's stdout, as Orca's worker sends it
    assert result["shell_responses"][0]["cmd"][0] == "cat"
    assert all(r["status_code"] == 0 and r["timed_out"] is False for r in result["shell_responses"])


def test_real_paths_are_reported_as_their_placeholders(executor: Executor, busybox_image: str) -> None:
    outcome = executor.run_job(orca_job(busybox_image, [{"cmd": "pwd; echo oops >&2", "working_dir": "$BUILD"}]))
    response = reported(outcome)["shell_responses"][0]
    assert (response["stdout"], response["stderr"], response["cmd"]) == ("$BUILD", "oops", "pwd; echo oops >&2")


def test_a_failing_download_is_an_error_in_the_result_and_nothing_runs(
    executor: Executor, busybox_image: str, file_server: str
) -> None:
    files = {"submission": file_info(f"{file_server}/missing.zip", "application/zip")}
    outcome = executor.run_job(orca_job(busybox_image, [{"cmd": "echo never"}], files))
    result = reported(outcome)
    assert not outcome.success
    assert result["errors"] == ["file 'submission': the server answered HTTP 404"]
    assert result["shell_responses"] == [] and "output" not in result


def test_an_archive_entry_that_leaves_its_directory_fails_the_job(
    executor: Executor, busybox_image: str, file_server: str, tmp_path: Path
) -> None:
    files = {"submission": file_info(f"{file_server}/evil.zip", "application/zip")}
    outcome = executor.run_job(orca_job(busybox_image, [{"cmd": "echo never"}], files))
    assert reported(outcome)["errors"] == [
        "file 'submission': the archive entry '../../escape.txt' points outside its directory"
    ]
    assert not list(tmp_path.rglob("escape.txt"))


def test_a_command_that_times_out_is_killed_with_its_children_and_on_fail_runs(
    executor: Executor, busybox_image: str
) -> None:
    script = [
        # A background child holds stdout open: killing the shell alone would not end the exec.
        {"cmd": "sleep 60 & sleep 60; echo never", "timeout": 1, "on_fail": "next"},
        {"cmd": ["ps", "-o", "stat,args"], "on_complete": "output"},
    ]
    outcome = executor.run_job(orca_job(busybox_image, script))
    result = reported(outcome)
    first, second = result["shell_responses"]
    assert (first["timed_out"], first["status_code"], first["stdout"]) == (True, None, "")
    processes = second["stdout"].splitlines()[1:]
    # Neither left running nor left as zombies (PID 1 reaps them).
    assert not [p for p in processes if "sleep 60" in p or p.startswith("Z")], processes
    assert outcome.success and result["errors"] == []


def test_on_fail_branches_and_abort(executor: Executor, busybox_image: str) -> None:
    script = [
        {
            "cmd": ["ls", "/nonexistent"],
            "on_fail": [{"cmd": "echo compile failed"}, {"cmd": "echo report", "on_complete": "abort"}],
        },
        {"cmd": "echo never reached", "on_complete": "output"},
    ]
    outcome = executor.run_job(orca_job(busybox_image, script))
    result = reported(outcome)
    assert [r["stdout"] for r in result["shell_responses"]] == ["", "compile failed", "report"]
    assert result["shell_responses"][0]["status_code"] == 1
    assert "No such file" in result["shell_responses"][0]["stderr"]
    assert "output" not in result and not outcome.success  # aborted: an unsuccessful result


def test_a_failure_with_no_on_fail_aborts(executor: Executor, busybox_image: str) -> None:
    outcome = executor.run_job(orca_job(busybox_image, [{"cmd": "exit 3"}, {"cmd": "echo never"}]))
    result = reported(outcome)
    assert [r["status_code"] for r in result["shell_responses"]] == [3]
    assert not outcome.success


def test_conditionals_test_the_container_file_system(executor: Executor, busybox_image: str) -> None:
    script = [
        {"cmd": "mkdir -p $BUILD/out && touch $BUILD/out/a.class"},
        {"condition": {"predicate": "file", "path": "$BUILD/out/a.class"}, "on_false": "missing"},
        {"condition": {"predicate": "dir", "path": "$BUILD/out/a.class"}, "on_true": "missing"},
        {"condition": {"predicate": "exists", "path": "$BUILD/nothing"}, "on_true": "missing", "on_false": "found"},
        {"cmd": "echo missing", "label": "missing", "on_complete": "abort"},
        {"cmd": "echo all checks right", "label": "found"},
    ]
    outcome = executor.run_job(orca_job(busybox_image, script))
    result = reported(outcome)
    assert [r["stdout"] for r in result["shell_responses"]] == ["", "all checks right"]
    assert outcome.success and result["output"] == "all checks right"  # ran off the end: output


def test_the_stage_timeout_bounds_the_whole_job(executor: Executor, busybox_image: str) -> None:
    script = [{"cmd": "echo started"}, {"cmd": "sleep 30", "timeout": 60}, {"cmd": "echo never"}]
    outcome = executor.run_job(orca_job(busybox_image, script, timeout=2))
    result = reported(outcome)
    assert [r["stdout"] for r in result["shell_responses"]] == ["started", ""]
    assert result["shell_responses"][1]["timed_out"] is True
    assert result["errors"] == ["the job took more than its timeout of 2s; stopped at script[1]"]
    assert not outcome.success and outcome.stages[0].timed_out


def test_an_invalid_script_reaching_the_grader_is_an_error_not_a_crash(executor: Executor, busybox_image: str) -> None:
    outcome = executor.run_job(orca_job(busybox_image, [{"cmd": "a", "on_complete": 0}]))
    (error,) = reported(outcome)["errors"]
    assert error.startswith("the grading script is not valid: script[0]: on_complete leads back to script[0]")
    assert not outcome.success


async def test_an_abort_kills_the_running_command(
    executor: Executor, busybox_image: str, docker_client: docker.DockerClient
) -> None:
    job = orca_job(busybox_image, [{"cmd": "sleep 60"}, {"cmd": "echo never"}])
    running = asyncio.create_task(asyncio.to_thread(executor.run_job, job))

    def commands_running() -> list[str]:
        label = {"label": f"broadway.job={job['job_id']}", "status": "running"}
        containers = docker_client.containers.list(filters=label, sparse=True)
        if not containers:
            return []
        return [" ".join(p[-1:]) for p in docker_client.api.top(containers[0].id)["Processes"]]

    await eventually(lambda: asyncio.to_thread(commands_running), lambda cmds: "sleep 60" in cmds, timeout=30)
    assert executor.abort(job["job_id"]) == 1
    outcome = await asyncio.wait_for(running, timeout=30)
    assert outcome.aborted
    assert outcome.orca_result is not None
    assert [r["cmd"] for r in outcome.orca_result["shell_responses"]] == ["sleep 60"]


def test_a_flood_of_output_is_capped_and_the_result_fits_the_api_limit(executor: Executor, busybox_image: str) -> None:
    script = [{"cmd": "yes 0123456789 | head -c 3000000; echo; echo last line", "on_complete": "output"}]
    outcome = executor.run_job(orca_job(busybox_image, script))
    stdout = reported(outcome)["shell_responses"][0]["stdout"]
    assert stdout.startswith("[output truncated: first") and stdout.endswith("last line")
    assert len(stdout) <= executor.limits.max_output_bytes + 100
    small = json.loads(outcome.result_json(max_bytes=200_000))
    assert len(json.dumps(small)) <= 200_000
    assert small["orca_result"]["output"].endswith("last line")  # the tail is what is kept


def test_an_image_without_a_shell_is_an_infrastructure_error(
    executor: Executor, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    context = tmp_path / "noshell"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY busybox /busybox\n")
    build_image(docker_client, "broadway-test-noshell:latest", context)
    outcome = executor.run_job(orca_job("broadway-test-noshell:latest", [{"cmd": ["/busybox", "true"]}]))
    assert outcome.error is not None and "needs sh and sleep" in outcome.error
    assert reported(outcome)["errors"] == [outcome.error]
    assert executor.healthy and not outcome.success
