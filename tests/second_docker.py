"""A second Docker engine for the tests: a second grading VM that lacks the first engine's images.

Its own --data-root, socket, --exec-root and --pidfile, all under one fresh directory, and its
own network namespace (`unshare --net`), with no bridge and no iptables rules: a second dockerd
with --bridge=none in the host's namespace deletes the host's docker0 and breaks every container
of the first engine. Graders stay in the host namespace and reach it over its unix socket
(DOCKER_HOST); their stages run with network none, which needs no bridge.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class SecondDocker:
    def __init__(self) -> None:
        # Short: a unix socket's path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="bwd2-", dir="/tmp"))  # mkdtemp: fresh, mode 0700
        self.socket = self.root / "docker.sock"
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """DOCKER_HOST for this engine."""
        return f"unix://{self.socket}"

    def client(self, timeout: int = 120) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def start(self) -> SecondDocker:
        """Start the engine and wait for it to answer; stopped again if it does not."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> SecondDocker:
        if shutil.which("dockerd") is None or shutil.which("unshare") is None:
            pytest.fail("the second-engine tests need dockerd and unshare")
        cmd = [
            "unshare", "--net", "dockerd",
            "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"), "-H", self.host,
            "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            # unshare execs dockerd: this process is the engine itself.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the second dockerd exited ({self.proc.returncode}):\n{self.log()}")
            if self.socket.exists():
                probe = self.client(timeout=5)
                try:
                    probe.ping()
                    return self
                except docker.errors.DockerException:
                    pass
                finally:
                    probe.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the second dockerd did not answer within {START_TIMEOUT_S:g}s:\n{self.log()}")
            time.sleep(0.1)  # a child process coming up: nothing to await but its socket

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Remove its containers, stop it (SIGTERM, then SIGKILL), and remove everything it kept."""
        if self.proc is not None and self.proc.poll() is None:
            client = self.client(timeout=30)
            try:
                for container in client.containers.list(all=True, sparse=True):
                    container.remove(force=True)
            except docker.errors.DockerException:
                pass
            finally:
                client.close()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # dockerd unmounts its layers on a clean stop; a killed one may leave a mount behind.
        for mount in _mounts_under(self.root):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1] for line in lines if len(line.split()) > 1]
    return sorted((p for p in points if p.startswith(str(root))), key=len, reverse=True)


@pytest.fixture(scope="module")
def second_docker() -> Iterator[SecondDocker]:
    """A second engine (module-wide: it takes seconds to start), stopped and removed after."""
    engine = SecondDocker().start()
    try:
        yield engine
    finally:
        engine.stop()
