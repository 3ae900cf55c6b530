"""A built grader image reaching a grader that lacks it, against moving it between engines by hand.

  ship   a --build grader (in this process, on the host's engine) builds an image holding
         --mb MiB of random data; the moment the API says it succeeded, a one-student run whose
         stage uses it is submitted to a grader child process on a second engine (its own
         dockerd in its own network namespace: tests/second_docker.py), which lacks the image:
         it downloads /api/v1/images/<sha>.tgz, docker-loads it and runs the stage. Timed from
         the build's success (server time) to the stage's container running (the stage prints
         the kernel's /proc/uptime, which the host reads too).
  byhand `docker save <image> | docker -H <second engine> load` of the same image, in the same
         run, after removing it from the second engine.

Last line: ship_s=<f> byhand_s=<f> ratio=<f>   (target ratio <= 1.3; medians over --rounds)
Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker
import docker.errors

from grader.__main__ import instance_id
from grader.client import GraderClient
from grader.config import GraderConfig
from grader.daemon import Daemon
from grader.executor import Executor
from grader.image_builder import local_tag
from tests.helpers import CLUSTER_TOKEN, ApiClient, eventually
from tests.processes import ApiProcess, GraderProcess
from tests.second_docker import SecondDocker
from utils.images import build_image

BASE = "broadway-bench-busybox:latest"


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


class EngineGrader(GraderProcess):
    """A grader child process speaking to the second engine."""

    def __init__(self, api_url: str, work_dir: Path, docker_host: str) -> None:
        super().__init__(api_url, work_dir, name="bench-engine2")
        self.docker_host = docker_host

    def _spawn(self, cmd: list[str], env: dict[str, str]) -> None:
        super()._spawn(cmd, {**env, "DOCKER_HOST": self.docker_host})


async def build(api: ApiClient, dockerfile: str) -> dict:
    sha = hashlib.sha256(dockerfile.encode()).hexdigest()
    body = {"dockerfile_contents": dockerfile, "dockerfile_sha_sum": sha}
    assert (await api.request("POST", "/api/v1/grader_images", json_body=body, auth=True)).status == 200

    async def status() -> dict:
        return (await api.request("GET", f"/api/v1/grader_images/status/{sha}", auth=True)).json

    # Polled closely: the clock starts at the server's finished_at, whenever this sees it.
    done = await eventually(status, lambda s: s["status"] in ("succeeded", "failed"), timeout=600, interval=0.01)
    assert done["status"] == "succeeded", done
    return done


async def ship(api: ApiClient, sha: str, finished_at: float) -> float:
    """Seconds from the build's success to the stage running on the second engine's grader."""
    config = {
        "student_pipeline": [{"image": local_tag(sha), "entrypoint": ["cat", "/proc/uptime"]}],
        "students": [{"STUDENT_ID": "s0"}],
    }
    # The build's end in the kernel's clock, which the stage reads too.
    success_uptime = uptime() - (time.time() - finished_at)
    run_id = await api.submit_and_start(config)
    run = await eventually(lambda: api.status(run_id), lambda s: s["status"] in ("succeeded", "failed"),
                           timeout=600, interval=0.05)  # fmt: skip
    assert run["status"] == "succeeded", run
    result = json.loads(run["student_statuses"][0]["result"])
    assert result.get("stages"), result.get("error")
    stage = result["stages"][0]
    return float(stage["output"].split()[0]) - success_uptime


def by_hand(tag: str, docker_host: str) -> float:
    started = time.perf_counter()
    save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
    load = subprocess.run(["docker", "-H", docker_host, "load"], stdin=save.stdout, capture_output=True, check=True)
    assert save.wait() == 0 and load.returncode == 0
    return time.perf_counter() - started


async def rounds(
    args: argparse.Namespace, host: docker.DockerClient, engine: SecondDocker, work: Path, tags: list[str]
) -> tuple[list[float], list[float]]:
    """The API, a builder (in this process) and the second engine's grader; each round's figures."""
    ships: list[float] = []
    hands: list[float] = []
    api_proc = ApiProcess(work / "api", "--max-image-mb", str(4 * args.mb + 64)).start()
    engine2 = engine.client(timeout=300)
    (work / "builder").mkdir()
    config = GraderConfig(api_url=api_proc.url, token=CLUSTER_TOKEN, work_dir=work / "builder", build=True,
                          poll_wait_s=1.0, build_timeout_s=600.0)  # fmt: skip
    client = GraderClient(config)
    daemon = Daemon(config, client, Executor(host, config.limits, config.work_dir, instance_id(config.work_dir)))
    builder = asyncio.create_task(daemon.run())
    grader = EngineGrader(api_proc.url, work / "engine2", engine.host)
    try:
        grader.start()
        api = ApiClient(api_proc.url)
        for round_ in range(args.rounds):
            dockerfile = (
                f"FROM {BASE}\nRUN echo {uuid.uuid4().hex} > /id && "
                f"dd if=/dev/urandom of=/blob bs=1048576 count={args.mb} 2>/dev/null\n"
            )
            done = await build(api, dockerfile)
            sha = done["sha"]
            tags.append(local_tag(sha))
            shipped = await ship(api, sha, done["finished_at"])
            engine2.images.remove(local_tag(sha), force=True)
            handed = await asyncio.to_thread(by_hand, local_tag(sha), engine.host)
            engine2.images.remove(local_tag(sha), force=True)
            ships.append(shipped)
            hands.append(handed)
            print(f"round {round_ + 1}: archive {done['size'] / 1e6:.1f} MB; ship {shipped:.2f}s, "
                  f"by hand {handed:.2f}s, ratio {shipped / handed:.2f}", flush=True)  # fmt: skip
    finally:
        grader.stop()
        daemon.request_stop()
        await asyncio.wait_for(builder, 60)
        client.close()
        engine2.close()
        api_proc.stop()
    return ships, hands


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=64, help="random data in the image, MiB (default 64)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    host = docker.from_env(timeout=300)
    build_image(host, BASE)
    engine = SecondDocker().start()
    tags: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
            ships, hands = await rounds(args, host, engine, Path(tmp), tags)
    finally:
        for tag in tags:
            try:
                host.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass
        engine.stop()  # whatever failed: no engine is left behind
    ship_s, hand_s = statistics.median(ships), statistics.median(hands)
    print(f"ship_s={ship_s:.3f} byhand_s={hand_s:.3f} ratio={ship_s / hand_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
