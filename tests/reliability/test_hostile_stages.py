"""Stages that attack the grader: each is contained, fails with a clear reason, and leaves the
grader working and nothing running (the start_grader fixture checks for leftovers)."""

from __future__ import annotations

import json

from broadway.server import ApiService
from tests.grader.conftest import StartGrader, finished_run, stages_of
from tests.helpers import ApiClient, stage

HOSTILE = {
    "fork_bomb": "bomb() { bomb | bomb & }; bomb; sleep 60",
    "memory_hog": "exec dd if=/dev/zero of=/dev/null bs=512M count=1",
    "output_flood": "yes 0123456789012345678901234567890123456789 | head -c 1000000000",
    "fills_job_dir": "dd if=/dev/zero of=/job/fill bs=1M count=4000 2>&1; echo wrote it all",
    "sleeps_forever": "sleep infinity",
    "reaches_out": "ls /sys/class/net; nc -w 3 1.1.1.1 80 </dev/null && echo REACHED; exit 3",
    "ignores_sigterm": "trap '' TERM INT; echo stubborn; while true; do sleep 1; done",
}


async def test_hostile_stages_are_contained(
    api_service: ApiService, api: ApiClient, start_grader: StartGrader, busybox_image: str
) -> None:
    grader = start_grader(
        api_service.url,
        "--slots", "3", "--timeout", "6", "--memory", "64m", "--pids", "64",
        "--max-output", "64k", "--job-dir-size", "32m",
    )  # fmt: skip
    run_id = await api.submit_and_start(
        {
            "student_pipeline": [stage(busybox_image, entrypoint=["sh", "-c", 'eval "$SCRIPT"'], env={"SCRIPT": ""})],
            "students": [{"CASE": case, "SCRIPT": script} for case, script in HOSTILE.items()],
        }
    )
    status = await finished_run(api, run_id, timeout=120)
    results = {job["student"]["CASE"]: (job, stages_of(job)[0]) for job in status["student_statuses"]}
    statuses = {case: job["status"] for case, (job, _) in results.items()}
    assert set(statuses.values()) == {"failed"}, statuses

    bomb = results["fork_bomb"][1]
    assert bomb["timed_out"] or "can't fork" in bomb["output"]
    assert results["memory_hog"][1]["oom_killed"]
    flood = results["output_flood"][1]
    assert flood["output_truncated"] and len(flood["output"]) < 70 * 1024
    assert results["fills_job_dir"][1]["job_dir_full"] and "wrote it all" not in results["fills_job_dir"][1]["output"]
    assert results["sleeps_forever"][1]["timed_out"]
    reach = results["reaches_out"][1]
    assert "Network is unreachable" in reach["output"] and "REACHED" not in reach["output"]
    assert reach["output"].split()[0] == "lo" and "eth0" not in reach["output"] and reach["exit_code"] == 3
    stubborn = results["ignores_sigterm"][1]
    assert stubborn["timed_out"] and stubborn["duration_s"] < 15

    # The grader is unharmed and goes on grading.
    after = await api.submit_and_start(
        {"student_pipeline": [stage(busybox_image, entrypoint=["echo", "fine"])], "students": [{}]}
    )
    assert (await finished_run(api, after))["student_statuses"][0]["status"] == "succeeded"
    assert grader.running
    assert json.loads(results["sleeps_forever"][0]["result"])["stages"][0]["exit_code"] != 0
