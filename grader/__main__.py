"""`python -m grader` / `broadway-grader`: the grader daemon a course's sysadmin runs on each VM."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import IO

import docker
import docker.errors

from broadway.logs import FORMATS, configure_logging
from grader import metrics
from grader.check import run_checks
from grader.client import GraderClient
from grader.config import DEFAULT_WORK_DIR, GraderConfig, Limits, add_image_arguments, image_settings, parse_size
from grader.daemon import Daemon
from grader.executor import Executor

log = logging.getLogger("grader")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="broadway-grader",
        description="Join a Broadway cluster and run grading jobs in Docker.",
        epilog="The first SIGTERM/SIGINT finishes the running jobs and exits; a second kills them.",
    )
    p.add_argument("legacy_token", nargs="?", metavar="CLUSTER_TOKEN",
                   help="cluster token, positional as the original grader took it")  # fmt: skip
    p.add_argument("--api-url", default=os.environ.get("BROADWAY_API_URL", "http://127.0.0.1:8888"),
                   help="the API's base URL (env BROADWAY_API_URL; default http://127.0.0.1:8888)")  # fmt: skip
    p.add_argument("--token", default=os.environ.get("BROADWAY_CLUSTER_TOKEN"),
                   help="cluster token the API printed at start-up (env BROADWAY_CLUSTER_TOKEN)")  # fmt: skip
    p.add_argument("--slots", type=int, default=1, help="jobs run at the same time (default 1)")
    p.add_argument("--name", default=socket.gethostname(), help="name shown in the API's logs (default: host name)")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                   help=f"job directories; one grader per directory (default {DEFAULT_WORK_DIR})")  # fmt: skip
    ceilings = p.add_argument_group(
        "ceilings per stage",
        "The most any stage gets. A stage's own `memory` and `timeout` may ask for less, never more: a "
        "larger (or non-positive) ask runs at the ceiling, and the stage's result says so under `clamped`.",
    )
    ceilings.add_argument("--memory", default="1g",
                          help="memory, swap the same, /tmp's pages included (default 1g)")  # fmt: skip
    ceilings.add_argument("--cpus", type=float, default=1.0, help="CPUs (default 1)")
    ceilings.add_argument("--pids", type=int, default=256,
                          help="processes and threads; a fork beyond it fails at once (default 256)")  # fmt: skip
    ceilings.add_argument("--timeout", type=float, default=30.0,
                          help="wall-clock seconds, then the container is killed (default 30)")  # fmt: skip
    ceilings.add_argument("--max-output", "--output-limit", dest="max_output", default="1m",
                          help="output kept, the tail; the result says what was dropped (default 1m)")  # fmt: skip
    ceilings.add_argument("--job-dir-size", default="1g",
                          help="most a job may write to /job before it is killed (default 1g)")  # fmt: skip
    ceilings.add_argument("--tmp-size", default="64m",
                          help="size of the tmpfs at /tmp; a write beyond it gets 'No space left on device' "
                          "(default 64m)")  # fmt: skip
    p.add_argument("--max-files", default="64m",
                   help="most a single job's submitted files may come to, all together; they are fetched "
                   "into /job/files before its first stage (default 64m)")  # fmt: skip
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default="text", choices=FORMATS,
                   help="text, or json: one JSON object a line (default text)")  # fmt: skip
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port (default: not served)")  # fmt: skip
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address the metrics are served on (default 127.0.0.1)")  # fmt: skip
    p.add_argument("--check", action="store_true", help="check Docker, the API and the work dir, then exit")
    add_image_arguments(p)
    return p


def config_from_args(argv: list[str] | None) -> tuple[GraderConfig, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        limits = Limits(
            memory_bytes=parse_size(args.memory),
            cpus=args.cpus,
            pids=args.pids,
            timeout_s=args.timeout,
            max_output_bytes=parse_size(args.max_output),
            job_dir_bytes=parse_size(args.job_dir_size),
            tmp_bytes=parse_size(args.tmp_size),
        )
        config = GraderConfig(
            api_url=args.api_url,
            # --check does not use the token (registering would leave a worker behind).
            token=args.token or args.legacy_token or ("unused" if args.check else ""),
            slots=args.slots,
            name=args.name,
            work_dir=args.work_dir.resolve(),
            limits=limits,
            max_files_bytes=parse_size(args.max_files),
            **image_settings(args),
        )
        if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
            raise ValueError("--metrics-port must be between 0 and 65535")
        return config, args
    except ValueError as exc:
        parser.error(str(exc))


def lock_work_dir(work_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the work directory: two graders sharing one would remove each other's files."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # Job directories inside are open to all (see Executor._prepare_dir); this one keeps other
    # local users from reaching them. Containers reach theirs through the bind mount regardless.
    work_dir.chmod(0o700)
    handle = open(work_dir / ".lock", "w")  # held for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        message = f"broadway-grader: another grader is using {work_dir}; give this one its own --work-dir"
        raise SystemExit(message) from None
    return handle


def instance_id(work_dir: Path) -> str:
    """The label value on this grader's containers: stable across restarts on one work dir."""
    return hashlib.sha256(f"{socket.gethostname()}:{work_dir.resolve()}".encode()).hexdigest()[:16]


async def serve(config: GraderConfig, docker_client: docker.DockerClient) -> int:
    executor = Executor(docker_client, config.limits, config.work_dir, instance_id(config.work_dir))
    client = GraderClient(config)
    daemon = Daemon(config, client, executor)
    daemon.install_signal_handlers()
    try:
        return await daemon.run()
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    config, args = config_from_args(argv)
    if args.check:
        return run_checks(config)
    configure_logging(args.log_level, args.log_format)
    lock = lock_work_dir(config.work_dir)
    try:
        docker_client = docker.from_env(timeout=60)
        docker_client.ping()
    except docker.errors.DockerException as exc:
        print(f"broadway-grader: cannot reach the Docker engine: {exc}", file=sys.stderr)
        return 1
    metrics_server = None
    if args.metrics_port is not None:
        try:
            metrics_server = metrics.serve(args.metrics_port, args.metrics_host)
        except OSError as exc:
            print(f"broadway-grader: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}",
                  file=sys.stderr)  # fmt: skip
            docker_client.close()
            return 1
    try:
        return asyncio.run(serve(config, docker_client))
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        docker_client.close()
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
