"""Running Broadway's own CLIs as real child processes in tests."""

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
from tests.helpers import CLIENT_TOKEN, CLUSTER_TOKEN

ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class ApiProcess:
    """`python -m broadway` in a child process, with its output in a log file."""

    def __init__(self, data_dir: Path, *args: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.args = list(args)
        self.log_path = data_dir / f"api-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ApiProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "broadway", "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--cluster-token", CLUSTER_TOKEN, "--client-token", CLIENT_TOKEN, *self.args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"API exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/api/v1/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"API not healthy within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

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


class GraderProcess:
    """`python -m grader` in a child process, with its output in a log file."""

    def __init__(self, api_url: str, work_dir: Path, *args: str, name: str = "test-grader") -> None:
        self.api_url = api_url
        self.work_dir = work_dir
        self.args = ["--name", name, *args]
        self.log_path = work_dir.parent / f"{work_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GraderProcess:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "grader", "--api-url", self.api_url, "--token", CLUSTER_TOKEN,
            "--work-dir", str(self.work_dir), "--log-level", "DEBUG", *self.args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

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
