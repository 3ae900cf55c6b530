"""The embedded store: an nx-27017 child process (MongoDB wire protocol on SQLite).

Used when no --mongo-url is given. The child listens on a free loopback port, keeps its data,
log and pid file under the data dir (its defaults are shared files in /tmp, which two instances
would fight over), and is asked by the kernel to die with the API, so a SIGKILLed API leaves no
orphan holding the database.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class EmbeddedStoreError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class EmbeddedStore:
    """Starts, waits for, and stops one nx-27017 server process."""

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/broadway"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "store.log"

    def start(self, ready_timeout: float = 20.0) -> None:
        """Start the child and block until it answers a ping (call before the event loop runs)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        self.spawn()
        self.wait_ready(ready_timeout)
        log.info("embedded store (nx-27017) listening on %s:%d, data in %s", self.host, self.port, self.data_dir)

    def spawn(self) -> None:
        """Start the child process without waiting for it.

        Call from the main thread: the child is asked to die with the thread that forked it
        (PR_SET_PDEATHSIG), and a worker thread may exit long before the API does. Nothing here
        waits, so the API's watchdog can call it on the event loop; start() first stops a store
        an earlier API left on this data dir, which may take seconds.
        """
        cmd = [
            # The package ships a console script but no __main__; call its entry point directly
            # so the store runs under the same interpreter (and venv) as the API.
            sys.executable, "-c", "import sys; from nx_27017.nx_27017 import main; sys.exit(main())",
            # One SQLite file per logical database; in its single-file mode, databases share collections.
            "--data-dir", str(self.data_dir / "store"),
            "--host", self.host,
            "-p", str(self.port),
            "--log-file", str(self.log_path),
            "--pid-file", str(self.data_dir / "store.pid"),
        ]  # fmt: skip
        with open(self.data_dir / "store.out", "ab") as out:
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )  # fmt: skip

    def wait_ready(self, timeout: float) -> None:
        """Block until the store answers a ping; EmbeddedStoreError (and the child stopped) if it does not."""
        deadline = time.monotonic() + timeout
        client: MongoClient = MongoClient(self.host, self.port, serverSelectionTimeoutMS=250, connect=False)
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise EmbeddedStoreError(
                        f"the embedded store exited with code {self.process.returncode}; "
                        f"see {self.data_dir / 'store.out'} and {self.log_path}"
                    )
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise EmbeddedStoreError(f"the embedded store did not answer within {timeout:.0f}s") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _stop_leftover(self) -> None:
        """Stop a store left running on this data dir by an API that could not stop it."""
        pid_file = self.data_dir / "store.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"nx_27017" in cmdline and str(self.data_dir / "store").encode() in cmdline:
            log.warning("stopping a leftover embedded store (pid %d) on %s", pid, self.data_dir)
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)

    @property
    def process_returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    @property
    def exited(self) -> bool:
        """True once the store process has died (it was started and is no longer running)."""
        return self.process is not None and self.process.poll() is not None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
