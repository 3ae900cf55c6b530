"""Builds a grader image the API handed this grader (--build): docker build, save, gzip, upload, report.

Local tag scheme: a build of Dockerfile sha S is tagged `broadway-image:S` (TAG_REPOSITORY), on
the builder and on every grader that loads it. A stage naming `broadway-image:S`, or the bare
64-hex S, runs that image (grader/image_cache.py fetches it first when it is missing).

The build uses Docker's classic builder (what the SDK's build endpoint speaks, as
DOCKER_BUILDKIT=0 selects on the command line), with the Dockerfile as the whole context, every
step's container capped at --build-memory (memory and swap), and --build-timeout of wall clock:
past it the build request's socket is shut down, which makes the engine cancel the build. Every Docker call
runs in the daemon's thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import re
import socket
import tarfile
import threading
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from grader.client import GraderClient

log = logging.getLogger(__name__)

TAG_REPOSITORY = "broadway-image"
# The `kind` of a poll's answer that is an image build (broadway/handlers/grader_images.py).
BUILD_KIND = "image_build"
_SHA = re.compile(r"[0-9a-f]{64}")
# The build log's tail kept as a failed build's error.
LOG_TAIL_LINES = 40
# Fast gzip: the archive crosses a LAN once or twice; level 1 costs a fraction of level 6's CPU.
GZIP_LEVEL = 1
COPY_CHUNK = 1 << 20


def local_tag(sha: str) -> str:
    """The local name of the image built from Dockerfile sha `sha`."""
    return f"{TAG_REPOSITORY}:{sha}"


def built_sha(image: Any) -> str | None:
    """The sha a stage's image names when it is a built grader image (`broadway-image:<sha>` or
    the bare sha), else None."""
    if not isinstance(image, str):
        return None
    if _SHA.fullmatch(image):
        return image
    repository, _, tag = image.partition(":")
    if repository == TAG_REPOSITORY and _SHA.fullmatch(tag):
        return tag
    return None


class BuildFailed(Exception):
    """The Dockerfile did not build (the message is the log's tail): the requester's problem."""


@dataclass
class BuildOutcome:
    success: bool
    error: str | None = None
    archive_bytes: int = 0
    seconds: float = 0.0


class ImageBuilder:
    def __init__(
        self, docker_client: docker.DockerClient, client: GraderClient, threads: Executor, work_dir: Path,
        timeout_s: float, memory_bytes: int,
    ) -> None:  # fmt: skip
        self.docker = docker_client
        self.client = client
        self.threads = threads
        self.dir = work_dir / "builds"
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes

    async def build_and_report(self, job: dict[str, Any]) -> BuildOutcome:
        """Build what a poll handed out, upload its archive and report; the outcome as reported
        (a build the API took back meanwhile is reported by nobody: its next attempt is)."""
        spec = job.get("build") or {}
        sha, contents, attempt = spec.get("sha"), spec.get("dockerfile_contents"), str(job.get("attempt") or "")
        started = time.monotonic()
        if not isinstance(sha, str) or not _SHA.fullmatch(sha) or not isinstance(contents, str):
            return BuildOutcome(False, "the build the API handed out has no sha or Dockerfile")
        outcome = await self._build_and_upload(sha, contents, job, attempt)
        outcome.seconds = time.monotonic() - started
        await self.client.report_build(str(spec.get("result_url")), attempt, outcome.success, outcome.error)
        verdict = "succeeded" if outcome.success else f"failed: {(outcome.error or '').splitlines()[-1:]}"
        log.info("image build %s %s in %.1fs", sha[:12], verdict, outcome.seconds)
        return outcome

    async def _build_and_upload(self, sha: str, contents: str, job: dict[str, Any], attempt: str) -> BuildOutcome:
        loop = asyncio.get_running_loop()
        log.info("image build %s: building", sha[:12])
        try:
            await self._build(sha, contents)
        except BuildFailed as exc:
            return BuildOutcome(False, str(exc))
        except docker.errors.DockerException as exc:
            return BuildOutcome(False, f"the builder's Docker engine failed: {exc}")
        archive = self.dir / f"{sha}.tar.gz"
        try:
            size = await loop.run_in_executor(self.threads, self._save, sha, archive)
            log.info("image build %s: built; uploading its archive (%d bytes)", sha[:12], size)
            uploaded = await self.client.upload_image(job["build"]["archive_url"], attempt, archive, size)
        except (docker.errors.DockerException, OSError) as exc:
            return BuildOutcome(False, f"saving the built image failed: {exc}")
        finally:
            await loop.run_in_executor(self.threads, _unlink, archive)
        if not uploaded:
            # Taken back (another attempt holds it now) or refused as too large: the latter is
            # a verdict worth reporting, the former is refused again.
            return BuildOutcome(False, f"the API refused the image archive ({size} bytes)", size)
        return BuildOutcome(True, None, size)

    async def _build(self, sha: str, contents: str) -> None:
        """docker build, cancelled at the timeout; BuildFailed with the log's tail."""
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        holder: dict[str, Any] = {}
        task = loop.run_in_executor(self.threads, self._build_blocking, sha, contents, cancel, holder)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.timeout_s)
        except TimeoutError:
            cancel.set()
            # The engine cancels a build whose client went away. Shutting the socket down wakes
            # the thread reading it at once; response.close() here would wait for that read.
            sock = holder.get("socket")
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                await task
            except Exception as exc:  # what the closed stream raised
                log.debug("build %s stopped at its timeout: %s", sha[:12], exc)
            tail = "\n".join(holder.get("log", ()))
            raise BuildFailed(f"the build took longer than {self.timeout_s:g}s (--build-timeout)\n{tail}") from None

    def _build_blocking(self, sha: str, contents: str, cancel: threading.Event, holder: dict[str, Any]) -> None:
        api = self.docker.api
        context = _context_tar(contents)
        params = {
            "t": local_tag(sha), "rm": "1", "forcerm": "1", "pull": "0",
            "memory": self.memory_bytes, "memswap": self.memory_bytes,
            "labels": json.dumps({"broadway.image.sha": sha}),
        }  # fmt: skip
        # The SDK's build() hides its response, which a timeout must be able to close.
        response = api._post(
            api._url("/build"), data=context, params=params, stream=True, timeout=None,
            headers={"Content-Type": "application/x-tar"},
        )  # fmt: skip
        holder["socket"] = _socket_of(response)
        lines: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        holder["log"] = lines
        error = None
        try:
            api._raise_for_status(response)
            for raw in response.iter_lines():
                if cancel.is_set():
                    break
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                text = str(entry.get("stream") or entry.get("status") or "").rstrip()
                if text:
                    lines.extend(text.splitlines())
                if entry.get("error"):
                    error = str(entry.get("error")).strip()
                    lines.append(error)
        except docker.errors.APIError as exc:
            raise BuildFailed(f"docker build refused the Dockerfile: {exc.explanation or exc}") from None
        finally:
            response.close()
        if cancel.is_set():
            return
        if error is not None:
            raise BuildFailed("\n".join(lines))
        try:
            self.docker.images.get(local_tag(sha))
        except docker.errors.ImageNotFound:
            raise BuildFailed("the build ended without an image:\n" + "\n".join(lines)) from None

    def _save(self, sha: str, archive: Path) -> int:
        """docker save of the built tag, gzip'd into `archive`; its size."""
        archive.parent.mkdir(parents=True, exist_ok=True)
        image = self.docker.images.get(local_tag(sha))
        with archive.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL) as out:
            for chunk in image.save(chunk_size=COPY_CHUNK, named=True):
                out.write(chunk)
        return archive.stat().st_size


def _socket_of(response: Any) -> socket.socket | None:
    """The socket a streamed Docker API response reads from (as the SDK's own
    _get_raw_response_socket finds it), or None where it cannot be found."""
    try:
        raw = response.raw._fp.fp.raw
    except AttributeError:
        return None
    sock = getattr(raw, "_sock", raw)
    return sock if isinstance(sock, socket.socket) else None


def _context_tar(contents: str) -> bytes:
    """A build context holding only the Dockerfile (Orca builds from the Dockerfile alone)."""
    data = contents.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
