"""What a stage is given before its container starts: limits under the grader's ceilings, the
Docker options they become, and the files of /job. No Docker needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from grader.__main__ import config_from_args
from grader.config import Limits
from grader.executor import Executor, container_options

CEILINGS = Limits(memory_bytes=256 << 20, timeout_s=30.0, tmp_bytes=16 << 20)


def given(**stage: Any) -> tuple[int, float, list[dict[str, Any]]]:
    limits = CEILINGS.stage_limits({"image": "x", **stage})
    return limits.memory_bytes, limits.timeout_s, limits.clamped


def test_a_stage_may_ask_for_less() -> None:
    assert given(memory="64m", timeout=5) == (64 << 20, 5.0, [])
    assert given() == (256 << 20, 30.0, []), "nothing asked: the ceilings"


def test_a_stage_asking_for_more_gets_the_ceiling_and_is_told() -> None:
    memory, timeout, clamped = given(memory="2g", timeout=600)
    assert (memory, timeout) == (256 << 20, 30.0)
    assert {(c["limit"], c["asked"], c["given"]) for c in clamped} == {
        ("memory", "2g", 256 << 20),
        ("timeout", 600, 30.0),
    }
    assert all("above the grader's" in c["reason"] for c in clamped)


@pytest.mark.parametrize("memory", ["0", 0, "0g", -1, "lots", True, 1.5])
def test_memory_that_is_not_a_positive_size_never_means_no_limit(memory: Any) -> None:
    got, _, clamped = given(memory=memory)
    assert got == 256 << 20
    assert clamped and clamped[0]["asked"] == memory and "not a positive size" in clamped[0]["reason"]
    assert container_options({"image": "x", "memory": memory}, CEILINGS, Path("/nowhere"))["mem_limit"] == 256 << 20


@pytest.mark.parametrize("timeout", [0, -3, "soon", float("nan"), float("inf"), None])
def test_timeout_that_is_not_a_positive_number_gets_the_ceiling(timeout: Any) -> None:
    _, got, clamped = given(timeout=timeout)
    assert got == 30.0
    assert bool(clamped) is (timeout is not None)


def test_memory_below_dockers_minimum_is_raised_to_it() -> None:
    memory, _, clamped = given(memory="1k")
    assert memory == 6 << 20 and clamped[0]["reason"] == "below Docker's minimum"


def test_docker_options_carry_the_limits_and_a_bounded_exec_tmp() -> None:
    options = container_options({"image": "x", "memory": "32m"}, CEILINGS, Path("/nowhere"))
    assert options["mem_limit"] == options["memswap_limit"] == 32 << 20
    assert options["pids_limit"] == 256 and options["network_mode"] == "none"
    tmp = options["tmpfs"]["/tmp"].split(",")
    assert f"size={16 << 20}" in tmp and "mode=1777" in tmp
    assert "exec" in tmp and "noexec" not in tmp, "stages build programs in /tmp and run them"


def test_output_limit_is_another_name_for_max_output_and_tmp_size_is_read() -> None:
    config, _ = config_from_args(["--token", "t", "--output-limit", "8k", "--tmp-size", "32m"])
    assert config.limits.max_output_bytes == 8 << 10 and config.limits.tmp_bytes == 32 << 20
    config, _ = config_from_args(["--token", "t", "--max-output", "4k"])
    assert config.limits.max_output_bytes == 4 << 10 and config.limits.tmp_bytes == 64 << 20


def test_roster_is_the_submitted_list_and_student_results_have_their_own_file(tmp_path: Path) -> None:
    executor = Executor(cast(Any, None), CEILINGS, tmp_path, "test")
    students = [{"NETID": "alice"}, {"NETID": "bob"}]
    results = [{"job_id": "1", "env": {"NETID": "alice"}, "status": "succeeded", "result": "{}"}]
    job_dir = tmp_path / "jobs" / "j"
    executor._prepare_dir(job_dir, {"job_id": "j", "students": students, "student_results": results})
    assert json.loads((job_dir / "roster.json").read_text()) == students
    assert json.loads((job_dir / "student_results.json").read_text()) == results
    assert {(job_dir / name).stat().st_mode & 0o777 for name in ("roster.json", "student_results.json")} == {0o666}

    other = tmp_path / "jobs" / "k"
    executor._prepare_dir(other, {"job_id": "k", "students": students})
    assert not (other / "student_results.json").exists(), "an API that sends no student_results: no file"
