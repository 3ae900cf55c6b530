"""Runs one job's stages in Docker under the operator's ceilings. Blocking: call it from a thread.

Each stage gets a fresh container; all stages of a job share a directory mounted at /job, and
each has its own bounded tmpfs at /tmp.
Output is streamed while the container runs and only a capped tail is kept: Docker's json-file
log of a chatty stage grows without bound and takes minutes to read back (see DESIGN.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import LogConfig, Mount
from docker.utils import parse_repository_tag

from grader.config import Limits, StageLimits
from grader.output import OutputTail

log = logging.getLogger(__name__)

LABEL = "broadway.grader"
# Below the API's default cap on a stored result (4 MiB), which cuts a result without regard for
# its JSON.
RESULT_BUDGET_BYTES = 3 * (1 << 20)
GUARD_INTERVAL_S = 0.25
# Docker keeps its own copy of the output too; bound it, since we never read it back.
_LOG_CONFIG = LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"})


class InfrastructureError(Exception):
    """The job could not be run for a reason that is not the student's (image missing, Docker error)."""


@dataclass
class StageResult:
    image: str
    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    job_dir_full: bool = False
    duration_s: float = 0.0
    output: str = ""
    output_truncated: bool = False
    # What the stage ran under, and which of its own asks were lowered (or set aside) and why.
    limits: dict[str, Any] = field(default_factory=dict)
    clamped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not (self.timed_out or self.oom_killed or self.job_dir_full)


@dataclass
class JobOutcome:
    stages: list[StageResult] = field(default_factory=list)
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.error is None and bool(self.stages) and all(stage.passed for stage in self.stages)

    def result_json(self, max_bytes: int = RESULT_BUDGET_BYTES) -> str:
        """The result as the API stores it. Kept under max_bytes by trimming the stages' outputs
        (each keeps its tail): the API cuts longer results, which would leave broken JSON."""
        stages = [asdict(stage) for stage in self.stages]
        text = self._encode(stages)
        share = max_bytes // max(len(stages), 1)
        while len(text.encode()) > max_bytes and share > 256:
            for stage in stages:
                output: str = stage["output"]
                if len(output.encode()) > share:
                    tail = output.encode()[-share:].decode("utf-8", "ignore")
                    stage["output"] = f"[output truncated to fit the result: {len(output)} characters]\n{tail}"
                    stage["output_truncated"] = True
            text = self._encode(stages)
            share //= 2  # JSON escaping can make a share take more room than its bytes
        return text

    def _encode(self, stages: list[dict[str, Any]]) -> str:
        result: dict[str, Any] = {"stages": stages}
        if self.error is not None:
            result["error"] = self.error
        return json.dumps(result)


class Executor:
    """Owns the grader's containers: runs them, kills them on a cold stop, sweeps up leftovers."""

    def __init__(self, client: docker.DockerClient, limits: Limits, work_dir: Path, instance: str) -> None:
        self.docker = client
        self.limits = limits
        self.jobs_dir = work_dir / "jobs"
        # Containers carry this label, so a restarted grader removes what a crashed one left,
        # without touching another grader's containers on the same host.
        self.instance = instance
        self._live: dict[str, Container] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # False after a Docker error, until a ping succeeds: the daemon takes no jobs meanwhile.
        self.healthy = True

    def ping(self) -> bool:
        """Whether the Docker engine answers; a success marks the executor healthy again."""
        try:
            self.healthy = bool(self.docker.ping())
        except (docker.errors.DockerException, OSError) as exc:
            log.debug("docker ping failed: %s", exc)
            self.healthy = False
        return self.healthy

    def remove_leftovers(self) -> int:
        """Remove containers and job directories left by an earlier run of this grader."""
        leftovers = self.docker.containers.list(all=True, filters={"label": f"{LABEL}={self.instance}"})
        for container in leftovers:
            _remove(container)
        if self.jobs_dir.exists():
            shutil.rmtree(self.jobs_dir, ignore_errors=True)
        return len(leftovers)

    def kill_all(self) -> None:
        """Cold stop: kill every running container now and start no new stage."""
        self._stopping.set()
        with self._lock:
            containers = list(self._live.values())
        for container in containers:
            _remove(container)

    def run_job(self, job: dict[str, Any]) -> JobOutcome:
        """Run the job's stages in order, stopping at the first that fails."""
        outcome = JobOutcome()
        job_id = str(job.get("job_id", "unknown"))
        job_dir = self.jobs_dir / f"{job_id}-{job.get('attempt') or 'a'}"
        try:
            self._prepare_dir(job_dir, job)
            for stage in job.get("stages", []):
                if self._stopping.is_set():
                    outcome.error = "infrastructure: the grader was stopped"
                    break
                result = self._run_stage(stage, job_dir, job_id)
                outcome.stages.append(result)
                if not result.passed:
                    break
        except InfrastructureError as exc:
            outcome.error = f"infrastructure: {exc}"
        except (docker.errors.DockerException, OSError) as exc:
            outcome.error = f"infrastructure: Docker error: {exc}"
            self.healthy = False
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)
        return outcome

    def _prepare_dir(self, job_dir: Path, job: dict[str, Any]) -> None:
        self.jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        job_dir.mkdir(exist_ok=True)
        # Stages run as whatever user their image says, with every capability dropped (so even
        # root in the container cannot override file modes): the directory must be open to all.
        job_dir.chmod(0o777)
        # roster.json is `students` verbatim, the run's list as submitted: post-processing images
        # written for the 2018 grader read exactly that. Each student's job and result, when the
        # API sends them, go to a file of their own.
        for key, name in (("students", "roster.json"), ("student_results", "student_results.json")):
            if key in job:
                path = job_dir / name
                path.write_text(json.dumps(job[key], indent=1))
                path.chmod(0o666)

    def _pull(self, image: str) -> None:
        repository, tag = parse_repository_tag(image)
        log.info("image %s is not here; pulling it", image)
        try:
            self.docker.images.pull(repository, tag=tag or "latest")
        except docker.errors.APIError as exc:
            reason = exc.explanation or str(exc)
            message = f"image {image!r} is not on this grader and could not be pulled: {reason}"
            raise InfrastructureError(message) from None

    def _run_stage(self, stage: dict[str, Any], job_dir: Path, job_id: str) -> StageResult:
        image = stage["image"]
        given = self.limits.stage_limits(stage)
        for note in given.clamped:
            log.info("job %s: %s %r -> %s (%s)", job_id, note["limit"], note["asked"], note["given"], note["reason"])
        options = container_options(stage, self.limits, job_dir, given)
        options["labels"] = {LABEL: self.instance, "broadway.job": job_id}
        try:
            try:
                container = self.docker.containers.create(image, **options)
            except docker.errors.ImageNotFound:
                # As `docker run` does: pull only when the image is missing (no lookup per stage).
                self._pull(image)
                container = self.docker.containers.create(image, **options)
        except docker.errors.APIError as exc:
            raise InfrastructureError(f"cannot create a container from {image!r}: {exc.explanation or exc}") from None
        with self._lock:
            self._live[container.id] = container
        try:
            if self._stopping.is_set():  # a cold stop came while the container was being created
                raise InfrastructureError("the grader was stopped")
            result = self._watch(container, image, given.timeout_s, job_dir)
            result.limits = self.limits.report(given)
            result.clamped = given.clamped
            return result
        finally:
            with self._lock:
                self._live.pop(container.id, None)
            _remove(container)

    def _watch(self, container: Container, image: str, timeout: float, job_dir: Path) -> StageResult:
        result = StageResult(image=image)
        tail = OutputTail(self.limits.max_output_bytes)
        # Attach before start, so not a byte of output is missed.
        stream = container.attach(stdout=True, stderr=True, stream=True, logs=True)
        timed_out = threading.Event()
        finished = threading.Event()
        dir_full = threading.Event()

        def kill_on_timeout() -> None:
            timed_out.set()
            _kill(container)

        def guard_job_dir() -> None:
            # /job is a directory on the grader's disk: a stage writing without end would fill
            # it. Checked a few times a second; a fast writer can overshoot by what it writes
            # in that time, so leave headroom on the disk beyond --job-dir-size.
            while not finished.wait(GUARD_INTERVAL_S):
                if directory_size(job_dir, stop_above=self.limits.job_dir_bytes) > self.limits.job_dir_bytes:
                    dir_full.set()
                    _kill(container)
                    return

        timer = threading.Timer(timeout, kill_on_timeout)
        guard = threading.Thread(target=guard_job_dir, name="job-dir-guard", daemon=True)
        started = time.monotonic()
        try:
            container.start()
            timer.start()
            guard.start()
            for chunk in stream:
                tail.feed(chunk)
            status = container.wait(timeout=30)
        finally:
            finished.set()
            timer.cancel()
            stream.close()
        result.duration_s = round(time.monotonic() - started, 3)
        result.exit_code = int(status.get("StatusCode", -1))
        result.timed_out = timed_out.is_set()
        result.job_dir_full = dir_full.is_set()
        if result.exit_code != 0:  # only a killed container can have been the OOM killer's
            container.reload()
            result.oom_killed = bool(container.attrs.get("State", {}).get("OOMKilled"))
        result.output = tail.text()
        result.output_truncated = tail.truncated
        return result


def directory_size(path: Path, stop_above: int) -> int:
    """Bytes in the files under path (symlinks not followed); stops counting past stop_above."""
    total = 0
    pending = [path]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue  # vanished, or not ours to read
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
            if total > stop_above:
                return total
    return total


def container_options(
    stage: dict[str, Any], limits: Limits, job_dir: Path, given: StageLimits | None = None
) -> dict[str, Any]:
    """docker SDK `containers.create` arguments for a stage: its own settings plus the isolation."""
    memory = (given or limits.stage_limits(stage)).memory_bytes
    return {
        "entrypoint": stage.get("entrypoint"),
        "environment": list(stage.get("env") or []),
        "hostname": stage.get("host_name") or None,
        "network_mode": None if stage.get("enable_networking") else "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(limits.cpus * 1e9),
        "pids_limit": limits.pids,
        "mounts": [Mount(target="/job", source=str(job_dir.resolve()), type="bind")],
        # Docker's tmpfs default is noexec: keep exec, since stages build programs in /tmp and run them.
        "tmpfs": {"/tmp": f"rw,exec,nosuid,nodev,size={limits.tmp_bytes},mode=1777"},  # noqa: S108 - in the container
        "log_config": _LOG_CONFIG,
        "detach": True,
    }


def _kill(container: Container) -> None:
    try:
        container.kill()
    except docker.errors.APIError:
        pass  # already gone or already stopped


def _remove(container: Container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        log.warning("could not remove container %s: %s", container.short_id, exc)
