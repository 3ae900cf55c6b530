"""Broadway's own CLIs (API, grader) as child processes: for the demo, the benchmarks and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from broadway.embedded_store import free_port

ROOT = Path(__file__).resolve().parent.parent


class ProcessError(RuntimeError):
    """A child process exited or never became healthy; the message carries its log."""


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class ChildProcess:
    """One of our CLIs in a child process, its output appended to log_path."""

    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, cmd: list[str], env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class ApiProcess(ChildProcess):
    """`python -m broadway` in a child process, with its output in a log file."""

    def __init__(
        self, data_dir: Path, *args: str, cluster_token: str, client_token: str, port: int | None = None
    ) -> None:
        self.data_dir = data_dir
        # Through the environment, not argv: other local users can read a process's arguments.
        self.env = child_env(BROADWAY_CLUSTER_TOKEN=cluster_token, BROADWAY_CLIENT_TOKEN=client_token)
        self.port = port or free_port()
        self.args = list(args)
        self.log_path = data_dir / f"api-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ApiProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "broadway", "--port", str(self.port), "--data-dir", str(self.data_dir),
            *self.args,
        ]  # fmt: skip
        self._spawn(cmd, self.env)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ProcessError(f"API exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/api/v1/health", timeout=1) as resp:  # noqa: S310 - our http URL
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise ProcessError(f"API not healthy within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class GraderProcess(ChildProcess):
    """`python -m grader` in a child process, with its output in a log file."""

    def __init__(
        self, api_url: str, work_dir: Path, *args: str, token: str, name: str = "grader", log_level: str = "DEBUG"
    ) -> None:
        self.api_url = api_url
        self.token = token
        self.log_level = log_level
        self.work_dir = work_dir
        self.args = ["--name", name, *args]
        self.log_path = work_dir.parent / f"{work_dir.name}.log"

    def start(self) -> GraderProcess:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "grader", "--api-url", self.api_url,
            "--work-dir", str(self.work_dir), "--log-level", self.log_level, *self.args,
        ]  # fmt: skip
        self._spawn(cmd, child_env(BROADWAY_CLUSTER_TOKEN=self.token))
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """Warm stop, escalating to a cold stop and then SIGKILL if it takes too long."""
        if self.proc is None:
            return 0
        for signum in (signal.SIGTERM, signal.SIGTERM):
            if self.proc.poll() is None:
                self.proc.send_signal(signum)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    continue
        self.kill()
        return self.proc.returncode
