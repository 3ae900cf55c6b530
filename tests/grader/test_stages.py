"""A grader runs each job's stages in real containers, with the isolation the issue promises."""

from __future__ import annotations

import json
from typing import Any

from broadway.server import ApiService
from tests.grader.conftest import StartGrader, finished_run, stages_of
from tests.helpers import ApiClient, stage


def sh(image: str, script: str, **fields: Any) -> dict[str, Any]:
    return stage(image, entrypoint=["sh", "-c", script], **fields)


async def run_one(api: ApiClient, pipeline: list[dict[str, Any]], **config: Any) -> dict[str, Any]:
    """Submit and start a one-student run; return that student's job once the run has ended."""
    run_id = await api.submit_and_start({"student_pipeline": pipeline, "students": [{"STUDENT_ID": "alice"}], **config})
    status = await finished_run(api, run_id)
    return dict(status["student_statuses"][0])


async def test_two_stages_share_job_dir_env_and_host_name(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    grader = start_grader(api_service.url)
    job = await run_one(
        api,
        [
            sh(busybox_image, 'echo "built for $STUDENT_ID" > /job/artifact'),
            sh(busybox_image, 'cat /job/artifact; echo "opts=$OPTS host=$(hostname)"; echo "job=$GRADING_JOB_ID"',
               env={"OPTS": "$FLAGS", "STUDENT_ID": ""}, host_name="grading-box"),
        ],
        env={"FLAGS": "-O2 --define=A=B"},
    )  # fmt: skip
    assert job["status"] == "succeeded", job
    first, second = stages_of(job)
    assert first["exit_code"] == 0 and not first["timed_out"]
    lines = second["output"].splitlines()
    assert "built for alice" in lines, "the second stage reads what the first wrote to /job"
    assert "opts=-O2 --define=A=B host=grading-box" in lines, "values with '=' arrive intact; host name set"
    assert f"job={job['job_id']}" in lines
    # /job is open to the stage's user, but other users of the grader's host cannot reach it.
    assert grader.work_dir.stat().st_mode & 0o777 == 0o700
    assert (grader.work_dir / "jobs").stat().st_mode & 0o777 == 0o700


async def test_stops_at_first_failing_stage(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    start_grader(api_service.url)
    job = await run_one(api, [sh(busybox_image, "echo compile error >&2; exit 3"), sh(busybox_image, "echo never")])
    assert job["status"] == "failed"
    (only,) = stages_of(job)
    assert only["exit_code"] == 3 and "compile error" in only["output"]
    assert job["error"] is None, "a student's failing stage is not an infrastructure error"


async def test_network_absent_by_default_present_when_enabled(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    start_grader(api_service.url)
    closed = await run_one(api, [sh(busybox_image, "ls /sys/class/net")])
    opened = await run_one(api, [sh(busybox_image, "ls /sys/class/net", enable_networking=True)])
    assert stages_of(closed)[0]["output"].split() == ["lo"]
    assert "eth0" in stages_of(opened)[0]["output"].split()


async def test_timeout_kills_the_container(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    start_grader(api_service.url)
    job = await run_one(api, [sh(busybox_image, "echo started; sleep 600", timeout=1)])
    (result,) = stages_of(job)
    assert job["status"] == "failed"
    assert result["timed_out"] is True and "started" in result["output"]
    assert result["duration_s"] < 10


async def test_memory_hog_is_oom_killed(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    start_grader(api_service.url)
    hog = await run_one(api, [sh(busybox_image, "dd if=/dev/zero of=/dev/null bs=256M count=1", memory="32m")])
    assert stages_of(hog)[0]["oom_killed"] is True and hog["status"] == "failed"


# 400 processes, no more: enough to pass a PIDs limit of 64 many times over, few enough that the
# test does no harm on a grader that has no PIDs limit at all (there it starts them all, then
# waits on them and is killed at the timeout, and the test fails).
FORKS_PAST_THE_LIMIT = "i=0; while [ $i -lt 400 ]; do sleep 30 & i=$((i+1)); done; echo all 400 started; wait"


async def test_pids_limit_makes_a_fork_fail_at_once_and_the_grader_goes_on(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    grader = start_grader(api_service.url, "--pids", "64", "--timeout", "20")
    bomb = await run_one(api, [sh(busybox_image, FORKS_PAST_THE_LIMIT)])
    (result,) = stages_of(bomb)
    assert bomb["status"] == "failed"
    # Busybox sh's words for EAGAIN from fork(): what the pids cgroup answers (memory would be ENOMEM).
    assert "can't fork: Resource temporarily unavailable" in result["output"], result
    assert "all 400 started" not in result["output"]
    assert not result["timed_out"] and result["duration_s"] < 5, "stopped by the limit, not by the 20 s timeout"
    assert result["limits"]["pids"] == 64
    after = await run_one(api, [sh(busybox_image, "echo still fine")])
    assert after["status"] == "succeeded", "the grader keeps working after the bomb"
    assert grader.running


MEMORY_LIMIT = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"


async def test_a_stage_may_lower_its_limits_but_never_raise_them(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    start_grader(api_service.url, "--memory", "64m", "--timeout", "3")
    greedy = await run_one(api, [sh(busybox_image, f"{MEMORY_LIMIT}; sleep 60", memory="2g", timeout=600)])
    (result,) = stages_of(greedy)
    assert result["output"].split()[0] == str(64 << 20), "the container ran under the grader's --memory"
    assert result["timed_out"] and result["duration_s"] < 10, "and was killed at the grader's --timeout"
    assert (result["limits"]["memory"], result["limits"]["timeout"]) == (64 << 20, 3.0)
    clamped = {c["limit"]: (c["asked"], c["given"]) for c in result["clamped"]}
    assert clamped == {"memory": ("2g", 64 << 20), "timeout": (600, 3.0)}, "the result says what was lowered"

    modest = await run_one(api, [sh(busybox_image, MEMORY_LIMIT, memory="32m", timeout=2)])
    (result,) = stages_of(modest)
    assert modest["status"] == "succeeded" and result["output"].split() == [str(32 << 20)]
    assert (result["limits"]["memory"], result["limits"]["timeout"], result["clamped"]) == (32 << 20, 2.0, [])


async def test_tmp_is_a_bounded_tmpfs_and_filling_it_harms_nothing(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    grader = start_grader(api_service.url, "--tmp-size", "16m")
    fill = "dd if=/dev/zero of=/tmp/fill bs=1M count=200; rc=$?; echo dd exit $rc; exit $rc"
    job = await run_one(api, [sh(busybox_image, fill)])
    (result,) = stages_of(job)
    assert job["status"] == "failed" and "No space left on device" in result["output"], result
    assert "16+0 records out" in result["output"] and "dd exit 1" in result["output"]
    assert not (result["timed_out"] or result["oom_killed"]) and result["limits"]["tmp_size"] == 16 << 20
    # Programs built in /tmp still run there (Docker's own tmpfs default would be noexec).
    after = await run_one(api, [sh(busybox_image, "cp /bin/busybox /tmp/busybox && /tmp/busybox echo ran from tmp")])
    assert after["status"] == "succeeded" and "ran from tmp" in stages_of(after)[0]["output"]
    assert grader.running


async def test_output_is_capped_keeping_the_tail(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    start_grader(api_service.url, "--max-output", "4k")
    job = await run_one(api, [sh(busybox_image, "seq 1 200000")])
    (result,) = stages_of(job)
    assert job["status"] == "succeeded"
    assert result["output_truncated"] is True
    assert result["output"].startswith("[output truncated")
    assert result["output"].rstrip().endswith("\n200000")
    assert len(result["output"].encode()) < 4096 + 200


async def test_missing_image_is_an_infrastructure_error(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader
) -> None:
    start_grader(api_service.url)
    job = await run_one(api, [stage("broadway-no-such-image:1", entrypoint=["true"])])
    assert job["status"] == "failed"
    assert "broadway-no-such-image:1" in job["error"] and job["error"].startswith("infrastructure")
    assert json.loads(job["result"])["stages"] == []


async def test_post_processing_reads_the_roster(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    start_grader(api_service.url)
    students = [{"STUDENT_ID": "alice"}, {"STUDENT_ID": "bob"}]
    run_id = await api.submit_and_start(
        {
            "student_pipeline": [sh(busybox_image, 'test "$STUDENT_ID" != bob')],
            "students": students,
            "postprocessing_pipeline": [
                sh(busybox_image, "cat /job/roster.json; echo; echo ===; cat /job/student_results.json")
            ],
        }
    )
    status = await finished_run(api, run_id)
    roster_text, results_text = stages_of(status["postprocessing_status"])[0]["output"].split("===")
    # roster.json is the run's list as submitted: what post-processing images of the 2018 grader read.
    assert json.loads(roster_text) == students
    by_student = {entry["env"]["STUDENT_ID"]: entry for entry in json.loads(results_text)}
    assert by_student["alice"]["status"] == "succeeded" and by_student["bob"]["status"] == "failed"
    assert json.loads(by_student["alice"]["result"])["stages"][0]["exit_code"] == 0
    assert status["status"] == "succeeded"


async def test_many_chatty_stages_still_give_a_whole_json_result(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    start_grader(api_service.url)  # --max-output 1m: six stages could report 6 MiB
    flood = sh(busybox_image, 'yes "stage $STAGE output" | head -c 1100000; echo; echo "end of $STAGE"')
    pipeline = [{**flood, "env": {"STAGE": str(n)}} for n in range(6)]
    job = await run_one(api, pipeline)
    assert len(job["result"].encode()) <= 4 << 20, "under the API's cap, so it was not cut"
    stages = stages_of(job)  # parses: the result is still whole JSON
    assert len(stages) == 6 and all(stage["output_truncated"] for stage in stages)
    assert [stage["output"].rstrip().splitlines()[-1] for stage in stages] == [f"end of {n}" for n in range(6)]
