"""Runs one job's stages in Docker under the operator's ceilings. Blocking: call it from a thread.

Each stage gets a fresh container; all stages of a job share a directory mounted at /job, and
each has its own bounded tmpfs at /tmp. A single job's files are in /job/files (fetched by the
daemon before run_job), its submitted `exercise` file also at /tmp/exercise (read-only), and its
last stage's response goes into the result (grader/response.py).
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

from grader import metrics
from grader.config import Limits, StageLimits
from grader.job_files import FetchError, checked_name
from grader.output import OutputTail
from grader.response import MAX_RESPONSE_BYTES, capture_response

log = logging.getLogger(__name__)

LABEL = "broadway.grader"
# Below the API's default cap on a stored result (4 MiB), which cuts a result without regard for
# its JSON.
RESULT_BUDGET_BYTES = 3 * (1 << 20)
GUARD_INTERVAL_S = 0.25
FILES_DIR = "files"
EXERCISE_PATH = "/tmp/exercise"  # noqa: S108 - in the container, where correctomatic images read it
# A response bigger than this once encoded (escapes can grow it) would crowd out the stages' outputs.
_RESPONSE_BUDGET_BYTES = 2 * (1 << 20)
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
    # A single job's stage keeps its stdout apart too (capped), for its response; not reported.
    stdout: bytes | None = field(default=None, repr=False)
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
    # A single job's response from its last stage, or why what it left was not one.
    response: dict[str, Any] | None = None
    response_error: str | None = None
    # The API cancelled the job while it ran: its containers were killed, nothing is reported.
    aborted: bool = False
    # An Orca job's GradingJobResult (grader/orca_runner.py), reported as result["orca_result"].
    orca_result: dict[str, Any] | None = None

    @property
    def success(self) -> bool:
        if self.orca_result is not None:
            # As Orca has it: a successful GradingJobResult always has `output`; an abort has none.
            return self.error is None and "output" in self.orca_result
        return self.error is None and bool(self.stages) and all(stage.passed for stage in self.stages)

    def result_json(self, max_bytes: int = RESULT_BUDGET_BYTES) -> str:
        """The result as the API stores it. Kept under max_bytes by trimming the stages' outputs
        (each keeps its tail): the API cuts longer results, which would leave broken JSON."""
        stages = [_stage_fields(stage) for stage in self.stages]
        if self.orca_result is not None:
            from grader.orca_runner import fit_orca_result

            # The stage summary is small (no output): the shell responses take the rest of the budget.
            overhead = len(self._encode(stages).encode()) - len(json.dumps(self.orca_result).encode())
            self.orca_result = fit_orca_result(self.orca_result, max_bytes - overhead)
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
        if self.response is not None:
            result["response"] = self.response
        if self.response_error is not None:
            result["response_error"] = self.response_error
        if self.orca_result is not None:
            result["orca_result"] = self.orca_result
        return json.dumps(result)

    def take_response(self, job_dir: Path) -> None:
        """Fill response/response_error from the last stage that ran (single jobs)."""
        if self.error is not None or not self.stages:
            return
        found = capture_response(job_dir, self.stages[-1].stdout)
        if found.value is not None and len(json.dumps(found.value).encode()) > _RESPONSE_BUDGET_BYTES:
            self.response_error = "the response is too large once encoded as JSON"
        else:
            self.response, self.response_error = found.value, found.error


def _stage_fields(stage: StageResult) -> dict[str, Any]:
    fields = asdict(stage)
    del fields["stdout"]
    return fields


class Executor:
    """Owns the grader's containers: runs them, kills them on a cold stop, sweeps up leftovers."""

    def __init__(self, client: docker.DockerClient, limits: Limits, work_dir: Path, instance: str) -> None:
        self.docker = client
        self.limits = limits
        self.jobs_dir = work_dir / "jobs"
        # Containers carry this label, so a restarted grader removes what a crashed one left,
        # without touching another grader's containers on the same host.
        self.instance = instance
        # container id -> (job id, container): what a cold stop or an abort kills.
        self._live: dict[str, tuple[str, Container]] = {}
        # Jobs the API cancelled: no further stage of theirs starts (until forget()).
        self._aborted: set[str] = set()
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
        # sparse: ids only. The SDK otherwise inspects each in turn, and a container removed in
        # between (one of this instance's, exiting as it is stopped) raised NotFound at start-up.
        leftovers = self.docker.containers.list(all=True, filters={"label": f"{LABEL}={self.instance}"}, sparse=True)
        for container in leftovers:
            _remove(container)
        if self.jobs_dir.exists():
            shutil.rmtree(self.jobs_dir, ignore_errors=True)
        return len(leftovers)

    def kill_all(self) -> None:
        """Cold stop: kill every running container now and start no new stage."""
        self._stopping.set()
        with self._lock:
            containers = [container for _, container in self._live.values()]
        for container in containers:
            _remove(container)

    def abort(self, job_id: str) -> int:
        """The API cancelled the job: kill its running container now and start no further stage
        of it. Returns how many containers were killed (their removal follows as usual)."""
        with self._lock:
            self._aborted.add(job_id)
            containers = [container for owner, container in self._live.values() if owner == job_id]
        for container in containers:
            try:
                _kill(container)
            except (docker.errors.DockerException, OSError) as exc:  # the engine is away: its watch fails too
                log.warning("job %s: could not kill container %s: %s", job_id, container.short_id, exc)
        return len(containers)

    def forget(self, job_id: str) -> None:
        """The daemon is done with the job: drop its abort mark."""
        with self._lock:
            self._aborted.discard(job_id)

    def aborted(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._aborted

    def job_dir(self, job: dict[str, Any]) -> Path:
        return self.jobs_dir / f"{job.get('job_id', 'unknown')}-{job.get('attempt') or 'a'}"

    def prepare_job_dir(self, job: dict[str, Any]) -> Path:
        """Create the job's directory (run_job does too; the daemon fetches files into it first)."""
        job_dir = self.job_dir(job)
        self._prepare_dir(job_dir, job)
        return job_dir

    def remove_job_dir(self, job: dict[str, Any]) -> None:
        job_dir = self.job_dir(job)
        shutil.rmtree(job_dir, ignore_errors=True)
        job_dir.with_name(job_dir.name + ".exercise").unlink(missing_ok=True)

    def run_job(self, job: dict[str, Any]) -> JobOutcome:
        """Run the job's stages in order, stopping at the first that fails. The job directory is
        removed at the end, files and all."""
        outcome = JobOutcome()
        job_id = str(job.get("job_id", "unknown"))
        job_dir = self.job_dir(job)
        single = job.get("kind") == "single"
        try:
            self._prepare_dir(job_dir, job)
            exercise = self._exercise_file(job, job_dir)
            for stage in job.get("stages", []):
                if self._stopping.is_set():
                    outcome.error = "infrastructure: the grader was stopped"
                    break
                if self.aborted(job_id):
                    break
                if "orca" in stage:
                    # Imported here: the runner builds on this module's container settings.
                    from grader.orca_runner import run_orca_stage

                    run_orca_stage(self, stage, job_dir, job_id, outcome)
                    break  # an Orca job is its one stage
                result = self._run_stage(stage, job_dir, job_id, exercise, keep_stdout=single)
                outcome.stages.append(result)
                if not result.passed:
                    break
        except InfrastructureError as exc:
            outcome.error = f"infrastructure: {exc}"
        except (docker.errors.DockerException, OSError) as exc:
            if not self.aborted(job_id):  # a killed container's calls may fail: not the engine's fault
                outcome.error = f"infrastructure: Docker error: {exc}"
                self.healthy = False
                metrics.docker_error("run")
        finally:
            outcome.aborted = self.aborted(job_id)
            if single and not outcome.aborted and outcome.orca_result is None:
                outcome.take_response(job_dir)
            shutil.rmtree(job_dir, ignore_errors=True)
            job_dir.with_name(job_dir.name + ".exercise").unlink(missing_ok=True)
        return outcome

    def _exercise_file(self, job: dict[str, Any], job_dir: Path) -> Path | None:
        """A copy of the exercise file outside /job, for /tmp/exercise: a stage may replace
        /job/files/... (even by a symlink to a host file, which a bind mount would follow)."""
        name = job.get("exercise")
        if not name:
            return None
        try:
            relative = checked_name(name)
        except FetchError as exc:
            raise InfrastructureError(str(exc)) from None
        copy = job_dir.with_name(job_dir.name + ".exercise")
        try:
            # Before any stage ran, files/ holds only what the daemon fetched.
            fd = os.open(job_dir / FILES_DIR / relative, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise InfrastructureError(f"the exercise file {name!r} was not fetched") from None
        with os.fdopen(fd, "rb") as source, open(copy, "wb") as target:
            shutil.copyfileobj(source, target)
        copy.chmod(0o444)
        return copy

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
        started = time.monotonic()
        try:
            self.docker.images.pull(repository, tag=tag or "latest")
            metrics.image_pulled(True, time.monotonic() - started)
        except docker.errors.APIError as exc:
            metrics.image_pulled(False, time.monotonic() - started)
            reason = exc.explanation or str(exc)
            message = f"image {image!r} is not on this grader and could not be pulled: {reason}"
            raise InfrastructureError(message) from None

    def _run_stage(
        self, stage: dict[str, Any], job_dir: Path, job_id: str, exercise: Path | None = None, keep_stdout: bool = False
    ) -> StageResult:
        image = stage["image"]
        given = self.limits.stage_limits(stage)
        for note in given.clamped:
            log.info("job %s: %s %r -> %s (%s)", job_id, note["limit"], note["asked"], note["given"], note["reason"])
        options = container_options(stage, self.limits, job_dir, given, exercise)
        container, aborted = self.create_container(image, options, job_id)
        try:
            if self._stopping.is_set():  # a cold stop came while the container was being created
                raise InfrastructureError("the grader was stopped")
            if aborted:  # so did an abort: the container never starts
                return StageResult(image=image, exit_code=None)
            result = self._watch(container, image, given.timeout_s, job_dir, keep_stdout)
            result.limits = self.limits.report(given)
            result.clamped = given.clamped
            metrics.stage_finished(image, result.duration_s, result.exit_code, result.timed_out)
            return result
        finally:
            self.release_container(container)

    def create_container(self, image: str, options: dict[str, Any], job_id: str) -> tuple[Container, bool]:
        """A container of the job, labelled for the leftover sweep and known to kill_all/abort
        until release_container; also whether the job was aborted meanwhile (then don't start it)."""
        options = {**options, "labels": {LABEL: self.instance, "broadway.job": job_id}}
        try:
            try:
                container = self.docker.containers.create(image, **options)
            except docker.errors.ImageNotFound:
                # As `docker run` does: pull only when the image is missing (no lookup per stage).
                self._pull(image)
                container = self.docker.containers.create(image, **options)
        except docker.errors.APIError as exc:
            metrics.docker_error("create")
            raise InfrastructureError(f"cannot create a container from {image!r}: {exc.explanation or exc}") from None
        with self._lock:
            self._live[container.id] = (job_id, container)
            aborted = job_id in self._aborted
        metrics.container_started()
        return container, aborted

    def release_container(self, container: Container) -> None:
        """Forget and remove a container create_container made."""
        with self._lock:
            self._live.pop(container.id, None)
        _remove(container)
        metrics.container_removed()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _watch(
        self, container: Container, image: str, timeout: float, job_dir: Path, keep_stdout: bool = False
    ) -> StageResult:
        result = StageResult(image=image)
        tail = OutputTail(self.limits.max_output_bytes)
        # stdout alone, for a single job's response: one byte over the cap and it is no response.
        stdout = OutputTail(MAX_RESPONSE_BYTES) if keep_stdout else None
        # Attach before start, so not a byte of output is missed. Demultiplexed: each chunk comes
        # as (stdout, stderr), in the order the stage wrote them.
        stream = container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True)
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
            for out, err in stream:
                if out:
                    tail.feed(out)
                    if stdout is not None:
                        stdout.feed(out)
                if err:
                    tail.feed(err)
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
        if stdout is not None and not stdout.truncated:
            result.stdout = stdout.raw()
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
    stage: dict[str, Any],
    limits: Limits,
    job_dir: Path,
    given: StageLimits | None = None,
    exercise: Path | None = None,
) -> dict[str, Any]:
    """docker SDK `containers.create` arguments for a stage: its own settings plus the isolation."""
    memory = (given or limits.stage_limits(stage)).memory_bytes
    mounts = [Mount(target="/job", source=str(job_dir.resolve()), type="bind")]
    if exercise is not None:
        # Docker mounts the /tmp tmpfs first (shorter path), then this file on top of it.
        mounts.append(Mount(target=EXERCISE_PATH, source=str(exercise.resolve()), type="bind", read_only=True))
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
        "mounts": mounts,
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
        metrics.docker_error("remove")
        log.warning("could not remove container %s: %s", container.short_id, exc)
