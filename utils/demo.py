"""`make demo`: the whole system once, on this machine, then everything stopped again.

Builds the example grader image, starts the API (embedded store, temporary data dir) and one
grader, runs start_run on examples/pipeline.json, and checks the outcome the example is built
to have: four students graded, dave's build failing, the summary written by post-processing.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import docker
import docker.errors

from grader.executor import LABEL
from utils.images import ImageBuildError, build_image
from utils.processes import ROOT, ApiProcess, GraderProcess, ProcessError, child_env
from utils.run_client import ClientError, RunClient

EXAMPLES = ROOT / "examples"
IMAGE = "broadway-example-grader:latest"
EXPECTED = {"alice": "succeeded", "bob": "succeeded", "carol": "succeeded", "dave": "failed", "erin": "succeeded"}


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def check_outcome(status: dict[str, Any]) -> list[str]:
    """What differs from the outcome the example is built to have (empty when all is as expected)."""
    problems = []
    got = {job["student"]["STUDENT_ID"]: job["status"] for job in status["student_statuses"]}
    if got != EXPECTED:
        problems.append(f"student statuses {got}, expected {EXPECTED}")
    post = status.get("postprocessing_status") or {}
    output = json.loads(post.get("result") or '{"stages": []}')["stages"]
    if post.get("status") != "succeeded" or not output or "summary: 4/5 graded" not in output[-1]["output"]:
        problems.append(f"post-processing did not write the expected summary: {post}")
    return problems


def run_demo(work: Path, docker_client: docker.DockerClient) -> int:
    say(f"building the example grader image {IMAGE}")
    build_image(docker_client, IMAGE, EXAMPLES / "add-assignment")

    cluster_token, client_token = secrets.token_hex(24), secrets.token_hex(24)
    say("starting the API (embedded store, data in a temporary directory)")
    api = ApiProcess(work / "api", cluster_token=cluster_token, client_token=client_token)
    grader_dir = work / "grader"
    grader = GraderProcess("", grader_dir, "--slots", "2", token=cluster_token, name="demo-grader", log_level="INFO")
    try:
        api.start()
        print(f"API at {api.url} (log: {api.log_path})")
        say("starting a grader with 2 slots")
        grader.api_url = api.url
        grader.start()
        print(f"grader log: {grader.log_path}")

        say("python -m utils.start_run examples/pipeline.json")
        env = child_env(BROADWAY_API_URL=api.url, BROADWAY_CLIENT_TOKEN=client_token)
        submitted = subprocess.run(
            [sys.executable, "-m", "utils.start_run", str(EXAMPLES / "pipeline.json"), "--no-wait"],
            env=env, cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if submitted.returncode != 0:
            print(submitted.stderr, file=sys.stderr)
            return 1
        run_id = submitted.stdout.strip()
        print(f"submitted and started grading run {run_id}; watching it:")
        watched = subprocess.run(
            [sys.executable, "-m", "utils.start_run", "--watch", run_id, "--interval", "0.3"],
            env=env, cwd=ROOT, check=False,
        )  # fmt: skip
        status = RunClient(api.url, client_token).results(run_id)
        problems = check_outcome(status)
        if problems or watched.returncode not in (0, 1):
            for problem in problems:
                print(f"demo: {problem}", file=sys.stderr)
            print(f"--- grader log ---\n{grader.log()[-3000:]}", file=sys.stderr)
            return 1
        print("\npost-processing summary:")
        print(json.loads(status["postprocessing_status"]["result"])["stages"][-1]["output"].rstrip())
        print("\nAs intended: dave's submission does not parse, so his job failed; the others were graded.")
    finally:
        say("stopping the grader and the API")
        grader.stop()
        api.stop()
    leftovers = docker_client.containers.list(all=True, filters={"label": LABEL})
    if leftovers:
        print(f"demo: containers left behind: {[c.short_id for c in leftovers]}", file=sys.stderr)
        return 1
    say("demo finished: nothing left running")
    return 0


def main() -> int:
    try:
        docker_client = docker.from_env(timeout=120)
        docker_client.ping()
    except docker.errors.DockerException as exc:
        print(f"demo: the Docker engine is not reachable ({exc}).\nStart it (`make docker` as root) and retry.",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="broadway-demo-") as tmp:
            return run_demo(Path(tmp), docker_client)
    except (ImageBuildError, ProcessError, ClientError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    finally:
        docker_client.close()


if __name__ == "__main__":
    sys.exit(main())
