"""Stages that attack the grader: each is contained, fails with a clear reason, and leaves the
grader working and nothing running (the start_grader fixture checks for leftovers).

A stage's output is its stdout and stderr as they arrived, in either order: assertions look for
whole lines, never at what comes first. The network probe aims at a listener this test opens on
the Docker bridge's host address, never beyond this machine."""

from __future__ import annotations

import asyncio
import fcntl
import json
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import docker
import pytest

from broadway.server import ApiService
from tests.grader.conftest import StartGrader, finished_run, stages_of
from tests.helpers import ApiClient, stage

BANNER = "hello-from-the-test-listener"
PROBE = 'nc -w 3 "$PROBE_HOST" "$PROBE_PORT" </dev/null'

HOSTILE = {
    # The exponential bomb holds every PID the limit allows; the main shell's next fork then fails
    # and the stage ends at once. With no PIDs limit it would grow until the 6 s timeout or the
    # memory limit stopped it, whose fork failures read "Out of memory", not EAGAIN's words.
    "fork_bomb": "bomb() { bomb | bomb & }; bomb; while true; do sleep 60 & done",
    "memory_hog": "exec dd if=/dev/zero of=/dev/null bs=512M count=1",
    "output_flood": "yes 0123456789012345678901234567890123456789 | head -c 1000000000",
    "fills_job_dir": "dd if=/dev/zero of=/job/fill bs=1M count=4000 2>&1; echo wrote it all",
    "fills_tmp": "dd if=/dev/zero of=/tmp/fill bs=1M count=4000; echo dd exit $?; exit 4",
    "sleeps_forever": "sleep infinity",
    "reaches_out": f'echo "interfaces: $(ls /sys/class/net | tr "\\n" " ")"; {PROBE} && echo REACHED; exit 3',
    "ignores_sigterm": "trap '' TERM INT; echo stubborn; while true; do sleep 1; done",
}

SIOCGIFADDR = 0x8915


def bridge_host_address(client: docker.DockerClient) -> str:
    """The host's address on Docker's default bridge: what a container with networking reaches this machine at."""
    attrs = client.networks.get("bridge").attrs
    for config in (attrs.get("IPAM") or {}).get("Config") or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
    # Engines that leave Gateway out of IPAM: the bridge interface's own address.
    name = (attrs.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
    return socket.inet_ntoa(packed[20:24])


@dataclass
class Listener:
    host: str
    port: int
    peers: list[str] = field(default_factory=list)


@pytest.fixture
async def bridge_listener(docker_client: docker.DockerClient) -> AsyncIterator[Listener]:
    """A TCP listener on the bridge's host address only, answering each connection with BANNER."""
    host = bridge_host_address(docker_client)
    listener = Listener(host, 0)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener.peers.append(str(writer.get_extra_info("peername")))
        writer.write(f"{BANNER}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, host=host, port=0)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()


def lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines()]


async def test_hostile_stages_are_contained(
    api_service: ApiService,
    api: ApiClient,
    start_grader: StartGrader,
    busybox_image: str,
    bridge_listener: Listener,
) -> None:
    grader = start_grader(
        api_service.url,
        "--slots", "3", "--timeout", "6", "--memory", "64m", "--pids", "64",
        "--max-output", "64k", "--job-dir-size", "32m", "--tmp-size", "16m",
    )  # fmt: skip
    probe_env = {"PROBE_HOST": bridge_listener.host, "PROBE_PORT": str(bridge_listener.port)}
    run_id = await api.submit_and_start(
        {
            "env": probe_env,
            "student_pipeline": [stage(busybox_image, entrypoint=["sh", "-c", 'eval "$SCRIPT"'], env={"SCRIPT": ""})],
            "students": [{"CASE": case, "SCRIPT": script} for case, script in HOSTILE.items()],
        }
    )
    status = await finished_run(api, run_id, timeout=120)
    results = {job["student"]["CASE"]: (job, stages_of(job)[0]) for job in status["student_statuses"]}
    statuses = {case: job["status"] for case, (job, _) in results.items()}
    assert set(statuses.values()) == {"failed"}, statuses

    bomb = results["fork_bomb"][1]
    # EAGAIN is the pids cgroup's answer; a bomb stopped by memory instead would read "Out of memory".
    assert "can't fork: Resource temporarily unavailable" in bomb["output"], bomb["output"][-2000:]
    assert not bomb["timed_out"] and bomb["duration_s"] < 4, "the PIDs limit ended it, not the 6 s timeout"
    assert results["memory_hog"][1]["oom_killed"]
    flood = results["output_flood"][1]
    assert flood["output_truncated"] and len(flood["output"]) < 70 * 1024
    assert results["fills_job_dir"][1]["job_dir_full"] and "wrote it all" not in results["fills_job_dir"][1]["output"]
    tmp = results["fills_tmp"][1]
    assert "No space left on device" in tmp["output"] and "dd exit 1" in lines(tmp["output"]), tmp
    assert tmp["exit_code"] == 4 and not (tmp["timed_out"] or tmp["oom_killed"])
    assert results["sleeps_forever"][1]["timed_out"]
    reach = results["reaches_out"][1]
    assert "interfaces: lo" in lines(reach["output"]), reach["output"]
    assert "Network is unreachable" in reach["output"] and BANNER not in reach["output"]
    assert "REACHED" not in lines(reach["output"]) and reach["exit_code"] == 3
    assert bridge_listener.peers == [], "no stage without networking reached the listener"
    stubborn = results["ignores_sigterm"][1]
    assert stubborn["timed_out"] and stubborn["duration_s"] < 15

    # The grader is unharmed and goes on grading. With networking the same probe reaches the
    # listener: the probe works, so the isolated stage's failure above was the isolation's doing.
    after = await api.submit_and_start(
        {
            "env": probe_env,
            "student_pipeline": [stage(busybox_image, entrypoint=["sh", "-c", PROBE], enable_networking=True)],
            "students": [{}],
        }
    )
    control = (await finished_run(api, after))["student_statuses"][0]
    assert control["status"] == "succeeded", control
    assert BANNER in lines(stages_of(control)[0]["output"])
    assert len(bridge_listener.peers) == 1
    assert grader.running
    assert json.loads(results["sleeps_forever"][0]["result"])["stages"][0]["exit_code"] != 0
