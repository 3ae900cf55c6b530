"""Runs an Orca job: its files fetched, then its grading script in ONE container of the grader image.

The job is an ordinary single job whose one stage carries `orca`:

    {"image": ..., "timeout": ..., "memory": ..., "orca": {"key": ..., "script": [...],
     "files": {name: {"url", "mime_type", "should_replace_paths"}}, "metadata_table": {...}}}

The files go under /job as grader/orca_files.py describes. The container gets exactly the
executor's isolation (container_options: memory, CPUs, PIDs, network none, the /tmp tmpfs, /job,
labels for the leftover sweep, kill_all and abort) and idles (PID 1 is a shell loop around
`sleep`, which also reaps what commands leave behind) while each command of the script runs in it
by `docker exec`, one after another along the script's graph (broadway/orca/script.py): an argv
list is exec'd as it is, a string through `sh -c`. Each command has its own timeout (its
`timeout`, else Orca's 60 s), never past the stage's timeout, which bounds the whole job. A
command that times out is killed with every process it started (`kill -9 -1` from a second exec;
PID 1 survives it), so the script goes on to its `on_fail`. Conditions are tested in the
container too (`test -e|-f|-d`), so the image needs `sh` and `sleep`, as Orca's grader images have.

The result is Orca's GradingJobResult, in JobOutcome.orca_result and so in the reported result
JSON under "orca_result": {"shell_responses": [{"cmd", "stdout", "stderr", "status_code",
"timed_out"}], "errors": [...], "key": ..., "output"?: ...}. As in Orca's worker: stdout and
stderr are right-stripped, `status_code` is null for a command that timed out, `output` is the
last command's stdout when the script ends at "output" (or runs off its end) and absent when it
ends at "abort" or cannot finish, and the real paths of $DOWNLOADED, $EXTRACTED and $BUILD are
turned back into those placeholders in everything reported. The job succeeded iff `output` is there.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.utils.socket import STDERR, frames_iter

from broadway.orca.script import ABORT, OUTPUT, BashStep, ConditionStep, Script, ScriptError, parse_script
from grader import metrics
from grader.executor import (
    GUARD_INTERVAL_S,
    InfrastructureError,
    JobOutcome,
    StageResult,
    container_options,
    directory_size,
)
from grader.orca_files import OrcaFileError, container_paths, fetch_files
from grader.output import OutputTail

if TYPE_CHECKING:
    from grader.executor import Executor

# Orca's worker gives a command this long when it names no `timeout` (DEFAULT_COMMAND_TIMEOUT).
DEFAULT_COMMAND_TIMEOUT_S = 60.0
# PID 1 of the container: a shell that idles, and so reaps what the commands leave behind (the
# children of a killed command would stay zombies, holding PIDs under the limit). `kill -9 -1`
# spares PID 1; the sleep it kills is started again.
_IDLE_SCRIPT = "while :; do sleep 3600 & wait; done"
_KILL_COMMANDS = ["sh", "-c", "kill -9 -1"]
_TEST_FLAGS = {"exists": "-e", "file": "-f", "dir": "-d"}


def run_orca_stage(executor: Executor, stage: dict[str, Any], job_dir: Path, job_id: str, outcome: JobOutcome) -> None:
    """Run the stage's script and put its GradingJobResult in outcome.orca_result (also when an
    infrastructure error, re-raised for run_job, stopped it)."""
    given_orca = stage.get("orca")
    orca: dict[str, Any] = given_orca if isinstance(given_orca, dict) else {}
    result: dict[str, Any] = {"shell_responses": [], "errors": [], "key": orca.get("key")}
    outcome.orca_result = result
    try:
        script = parse_script(orca.get("script"))
    except ScriptError as exc:
        result["errors"] = [f"the grading script is not valid: {message}" for message in exc.errors]
        return
    given = executor.limits.stage_limits(stage)
    image = str(stage.get("image"))
    summary = StageResult(image=image, limits=executor.limits.report(given), clamped=given.clamped)
    outcome.stages.append(summary)
    started = time.monotonic()
    try:
        fetch_files(
            orca.get("files") or {},
            job_dir,
            executor.limits.job_dir_bytes,
            cancelled=lambda: executor.aborted(job_id) or executor.stopping,
        )
    except OrcaFileError as exc:
        result["errors"].append(str(exc))
        return
    if executor.aborted(job_id):
        return
    idle = {**stage, "entrypoint": ["sh", "-c", _IDLE_SCRIPT]}
    options = container_options(idle, executor.limits, job_dir, given)
    try:
        container, aborted = executor.create_container(image, options, job_id)
        try:
            if executor.stopping:
                raise InfrastructureError("the grader was stopped")
            if aborted:
                return
            walk = _Walk(executor, container, script, job_dir, given.timeout_s, result)
            walk.run()
            summary.timed_out = walk.job_timed_out.is_set()
            summary.job_dir_full = walk.dir_full.is_set()
            responses = result["shell_responses"]
            summary.exit_code = responses[-1]["status_code"] if responses else None
        finally:
            summary.duration_s = round(time.monotonic() - started, 3)
            executor.release_container(container)
        metrics.stage_finished(image, summary.duration_s, summary.exit_code, summary.timed_out)
    except InfrastructureError as exc:
        result["errors"].append(f"infrastructure: {exc}")
        raise
    except (docker.errors.DockerException, OSError) as exc:
        if not executor.aborted(job_id):
            result["errors"].append(f"infrastructure: Docker error: {exc}")
        raise
    finally:
        _censor(result)


@dataclass
class _Exec:
    status_code: int | None
    stdout: str
    stderr: str
    timed_out: bool


class _Walk:
    """One run of the script's graph in a started container."""

    def __init__(
        self,
        executor: Executor,
        container: Container,
        script: Script,
        job_dir: Path,
        timeout_s: float,
        result: dict[str, Any],
    ) -> None:
        self.executor = executor
        self.api = executor.docker.api
        self.container = container
        self.script = script
        self.job_dir = job_dir
        self.timeout_s = timeout_s
        self.result = result
        self.paths = container_paths()
        self.job_timed_out = threading.Event()
        self.dir_full = threading.Event()
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self.container.start()
        except docker.errors.APIError as exc:
            # The image's fault (no sh, say), not the engine's: the grader stays healthy.
            reason = exc.explanation or exc
            raise InfrastructureError(
                f"the image cannot idle for the script (it needs sh and sleep): {reason}"
            ) from None
        deadline = time.monotonic() + self.timeout_s
        timer = threading.Timer(self.timeout_s, self._job_timeout)
        guard = threading.Thread(target=self._guard_job_dir, name="orca-job-dir-guard", daemon=True)
        timer.start()
        guard.start()
        try:
            self._walk(deadline)
        finally:
            self.finished.set()
            timer.cancel()

    def _walk(self, deadline: float) -> None:
        responses: list[dict[str, Any]] = self.result["shell_responses"]
        errors: list[str] = self.result["errors"]
        index: int | str = 0
        # Acyclic (checked): each step runs at most once, so this ends.
        while isinstance(index, int):
            step = self.script.steps[index]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.job_timed_out.is_set():
                errors.append(f"the job took more than its timeout of {self.timeout_s:g}s; {step.where} did not run")
                return
            if isinstance(step, ConditionStep):
                test = ["sh", "-c", f'test {_TEST_FLAGS[step.predicate]} "$1"', "sh", self._expand(step.path)]
                outcome = self._exec(test, None, remaining)
                if not self._container_alive(outcome, errors, step.where):
                    return
                index = step.on_true if outcome.status_code == 0 else step.on_false
                continue
            assert isinstance(step, BashStep)
            timeout = min(step.timeout_s or DEFAULT_COMMAND_TIMEOUT_S, remaining)
            argv = [self._expand(arg) for arg in step.cmd] if isinstance(step.cmd, tuple) else ["sh", "-c"]
            if isinstance(step.cmd, str):
                argv.append(self._expand(step.cmd))
            workdir = self._expand(step.working_dir) if step.working_dir else None
            outcome = self._exec(argv, workdir, timeout)
            responses.append(
                {
                    "cmd": list(step.cmd) if isinstance(step.cmd, tuple) else step.cmd,
                    "stdout": outcome.stdout,
                    "stderr": outcome.stderr,
                    "status_code": outcome.status_code,
                    "timed_out": outcome.timed_out,
                }
            )
            if not self._container_alive(outcome, errors, step.where):
                return
            passed = outcome.status_code == 0 and not outcome.timed_out
            index = step.on_complete if passed else step.on_fail
        if index == OUTPUT:
            # Orca's worker: the last command's stdout (TAP, for Bottlenose) is the output.
            self.result["output"] = responses[-1]["stdout"] if responses else ""
        elif index == ABORT:
            pass  # ends without output: an unsuccessful GradingJobResult

    def _container_alive(self, outcome: _Exec, errors: list[str], where: str) -> bool:
        """False (with the reason in errors) when the container was stopped under the command."""
        if self.job_timed_out.is_set():
            outcome.timed_out = True
            errors.append(f"the job took more than its timeout of {self.timeout_s:g}s; stopped at {where}")
            return False
        if self.dir_full.is_set():
            limit = self.executor.limits.job_dir_bytes
            errors.append(f"the job directory grew past the grader's limit of {limit} bytes; stopped at {where}")
            return False
        if self.executor.stopping:
            errors.append("infrastructure: the grader was stopped")
            return False
        return True

    def _exec(self, argv: list[str], workdir: str | None, timeout: float) -> _Exec:
        limits = self.executor.limits
        stdout, stderr = OutputTail(limits.max_output_bytes), OutputTail(limits.max_output_bytes)
        try:
            exec_id = self.api.exec_create(self.container.id, argv, stdout=True, stderr=True, workdir=workdir)["Id"]
            # The raw socket, not the SDK's stream: only the socket can be closed when we are done.
            raw = self.api.exec_start(exec_id, socket=True)
        except docker.errors.APIError as exc:
            if self._stopped():
                return _Exec(None, "", "", self.job_timed_out.is_set())
            return _Exec(None, "", f"the command could not be started: {exc.explanation or exc}", False)
        timed_out = threading.Event()

        def kill_command() -> None:
            timed_out.set()
            self._kill_processes()

        timer = threading.Timer(timeout, kill_command)
        timer.start()
        try:
            for stream_id, chunk in frames_iter(raw, tty=False):
                (stderr if stream_id == STDERR else stdout).feed(chunk)
        finally:
            timer.cancel()
            _close(raw)
        status = None if timed_out.is_set() or self._stopped() else self._exit_code(exec_id)
        return _Exec(
            status_code=status,
            stdout=stdout.text().rstrip(),
            stderr=stderr.text().rstrip(),
            timed_out=timed_out.is_set(),
        )

    def _exit_code(self, exec_id: str) -> int | None:
        # The stream ends when the process closes its output; its exit is recorded a moment later.
        waited = threading.Event()
        for _ in range(100):
            info = self.api.exec_inspect(exec_id)
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            waited.wait(0.02)
        return None

    def _kill_processes(self) -> None:
        """Kill the timed-out command and all it started, leaving the container to the next one."""
        try:
            kill_id = self.api.exec_create(self.container.id, _KILL_COMMANDS)["Id"]
            self.api.exec_start(kill_id)
        except docker.errors.DockerException:
            _kill(self.container)  # no shell to kill with: the job ends here

    def _job_timeout(self) -> None:
        self.job_timed_out.set()
        _kill(self.container)

    def _guard_job_dir(self) -> None:
        limit = self.executor.limits.job_dir_bytes
        while not self.finished.wait(GUARD_INTERVAL_S):
            if directory_size(self.job_dir, stop_above=limit) > limit:
                self.dir_full.set()
                _kill(self.container)
                return

    def _stopped(self) -> bool:
        return self.job_timed_out.is_set() or self.dir_full.is_set() or self.executor.stopping

    def _expand(self, text: str) -> str:
        for placeholder, path in self.paths.items():
            text = text.replace(placeholder, path)
        return text


def _close(raw: Any) -> None:
    # The SDK hands a SocketIO over the engine's socket; closing it leaves the socket open.
    sock = getattr(raw, "_sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        raw.close()
    except OSError:
        pass


def _kill(container: Container) -> None:
    try:
        container.kill()
    except docker.errors.APIError:
        pass  # already stopped


def _censor(result: dict[str, Any]) -> None:
    """As Orca's worker does: the real directories back into $DOWNLOADED, $EXTRACTED, $BUILD."""
    reverse = [(path, placeholder) for placeholder, path in container_paths().items()]

    def censor(text: str) -> str:
        for path, placeholder in reverse:
            text = text.replace(path, placeholder)
        return text

    for response in result["shell_responses"]:
        response["stdout"] = censor(response["stdout"])
        response["stderr"] = censor(response["stderr"])
    result["errors"] = [censor(error) for error in result["errors"]]
    if "output" in result:
        result["output"] = censor(result["output"])


def fit_orca_result(result: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """The result within max_bytes once encoded, by keeping the tail of the longest texts (the
    API cuts a longer result without regard for its JSON)."""
    if len(json.dumps(result).encode()) <= max_bytes:
        return result
    fitted = copy.deepcopy(result)
    holders: list[tuple[dict[str, Any], str]] = [
        (r, f) for r in fitted["shell_responses"] for f in ("stdout", "stderr")
    ]
    if "output" in fitted:
        holders.append((fitted, "output"))
    share = max(max_bytes // max(len(holders), 1), 1)
    while len(json.dumps(fitted).encode()) > max_bytes and share >= 64:
        for holder, field in holders:
            text: str = holder[field]
            data = text.encode()
            if len(data) > share:
                tail = data[-share:].decode("utf-8", "ignore")
                holder[field] = f"[truncated to fit the result: {len(data)} bytes]\n{tail}"
        share //= 2  # JSON escaping can make a share take more room than its bytes
    return fitted
