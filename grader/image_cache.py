"""Built grader images on a grader that lacks them: downloaded from the API, loaded, kept in an LRU.

Before a job runs, every stage image that is a built grader image (`broadway-image:<sha>` or
the bare sha: grader/image_builder.py's tag scheme) and is not in the engine is fetched from
GET /api/v1/images/<sha>.tgz into <work dir>/images and `docker load`ed. One download per image
per grader, however many slots wait for it (single flight: the others await the same task).
Progress is logged every PROGRESS_EVERY_S. Stages naming the bare sha are rewritten to the tag.

The images this cache loaded (or its builder built) are remembered in <work dir>/images/cache.json
with their size and last use; past --image-cache-gb the least recently used are removed, never one
a running job uses (nor one a container still holds: Docker refuses, and it is skipped).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections import Counter
from concurrent.futures import Executor
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPClientError, HTTPRequest

from grader.client import GraderClient
from grader.image_builder import built_sha, local_tag

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0
# A download is cut when it moves less than LOW_SPEED_BYTES a second for LOW_SPEED_S; whatever
# its size, never after more than MAX_DOWNLOAD_S.
LOW_SPEED_BYTES = 64 << 10
LOW_SPEED_S = 30
MAX_DOWNLOAD_S = 6 * 3600.0
# Larger than any image the API takes (its --max-image-mb).
MAX_ARCHIVE_BYTES = 1 << 40


class ImageUnavailable(Exception):
    """A built image a stage names could not be fetched or loaded (not the student's fault)."""


class ImageCache:
    def __init__(
        self, docker_client: docker.DockerClient, client: GraderClient, threads: Executor, work_dir: Path,
        capacity_bytes: int,
    ) -> None:  # fmt: skip
        self.docker = docker_client
        self.client = client
        self.threads = threads
        self.dir = work_dir / "images"
        self.capacity_bytes = capacity_bytes
        # Archives are streamed to disk, never held: the client's 100 MB body cap does not apply.
        self.http = CurlAsyncHTTPClient(force_instance=True, max_clients=4, max_body_size=MAX_ARCHIVE_BYTES)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._in_use: Counter[str] = Counter()
        # sha -> {"size": bytes in the engine, "last_used": unix time}; loaded on first use.
        self._entries: dict[str, dict[str, float]] | None = None
        # Downloads made (tests and the benchmark read it).
        self.downloads = 0

    def close(self) -> None:
        self.http.close()

    async def acquire(self, job: dict[str, Any]) -> list[str]:
        """Make every built image the job's stages name present; returns their shas, in use
        until release(). ImageUnavailable when one cannot be had."""
        shas: list[str] = []
        for stage in job.get("stages") or []:
            sha = built_sha(stage.get("image")) if isinstance(stage, dict) else None
            if sha is None:
                continue
            stage["image"] = local_tag(sha)
            if sha not in shas:
                shas.append(sha)
        self._in_use.update(shas)
        try:
            for sha in shas:
                await self._ensure(sha)
        except BaseException:
            self.release(shas)
            raise
        return shas

    def release(self, shas: list[str]) -> None:
        """The job that acquired these images is done with them."""
        self._in_use.subtract(shas)
        self._in_use = +self._in_use  # drop the zeros

    async def adopt(self, sha: str) -> None:
        """An image built here: it counts in the cache like one that was loaded."""
        loop = asyncio.get_running_loop()
        size = await loop.run_in_executor(self.threads, self._image_size, sha)
        if size is not None:
            await self._record(sha, size)

    async def _ensure(self, sha: str) -> None:
        loop = asyncio.get_running_loop()
        if sha not in self._inflight and await loop.run_in_executor(self.threads, self._image_size, sha) is not None:
            await self._touch(sha)
            return
        task = self._inflight.get(sha)
        if task is None:
            task = asyncio.create_task(self._fetch_and_load(sha), name=f"image {sha[:12]}")
            self._inflight[sha] = task
            task.add_done_callback(lambda _: self._inflight.pop(sha, None))
        else:
            log.info("image %s: waiting for the download already under way", sha[:12])
        # Shielded: one waiting job cancelled (a cold stop) must not cancel the others' download.
        await asyncio.shield(task)

    async def _fetch_and_load(self, sha: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.threads, lambda: self.dir.mkdir(parents=True, exist_ok=True))
        part = self.dir / f"{sha}.tgz.part"
        started = time.monotonic()
        try:
            size = await self._download(sha, part)
            fetched = time.monotonic()
            log.info("image %s: downloaded %d bytes in %.1fs; loading it", sha[:12], size, fetched - started)
            loaded = await loop.run_in_executor(self.threads, self._load, sha, part)
            log.info("image %s: loaded in %.1fs", sha[:12], time.monotonic() - fetched)
        finally:
            await loop.run_in_executor(self.threads, lambda: part.unlink(missing_ok=True))
        await self._record(sha, loaded)

    async def _download(self, sha: str, part: Path) -> int:
        loop = asyncio.get_running_loop()
        handle: IO[bytes] = await loop.run_in_executor(self.threads, part.open, "wb")
        progress = _Progress(sha)
        query = urllib.parse.urlencode({"worker_id": self.client.worker_id})
        url = f"{self.client.base}/images/{sha}.tgz?{query}"

        def on_chunk(chunk: bytes) -> None:
            handle.write(chunk)  # buffered: page-cache writes, as fast as the socket
            progress.add(len(chunk))

        request = HTTPRequest(
            url, method="GET", streaming_callback=on_chunk, header_callback=progress.header,
            request_timeout=MAX_DOWNLOAD_S, connect_timeout=10, prepare_curl_callback=_download_options,
        )  # fmt: skip
        self.downloads += 1
        log.info("image %s: not on this grader; downloading it from the API", sha[:12])
        try:
            response = await self.http.fetch(request, raise_error=False)
        except (CurlError, HTTPClientError, OSError) as exc:
            raise ImageUnavailable(f"image {sha}: the download failed: {exc}") from None
        finally:
            await loop.run_in_executor(self.threads, handle.close)
        if response.code != 200:
            raise ImageUnavailable(f"image {sha}: the API answered HTTP {response.code} {_error_of(response.body)}")
        if progress.expected is not None and progress.received != progress.expected:
            raise ImageUnavailable(f"image {sha}: got {progress.received} of {progress.expected} bytes")
        return progress.received

    def _load(self, sha: str, part: Path) -> int:
        try:
            with part.open("rb") as archive:
                self.docker.images.load(archive)  # the engine reads the gzip'd tar as it comes
        except docker.errors.DockerException as exc:
            raise ImageUnavailable(f"image {sha}: docker load failed: {exc}") from None
        size = self._image_size(sha)
        if size is None:
            raise ImageUnavailable(f"image {sha}: the archive did not hold {local_tag(sha)}")
        return size

    def _image_size(self, sha: str) -> int | None:
        try:
            return int(self.docker.images.get(local_tag(sha)).attrs.get("Size") or 0)
        except docker.errors.ImageNotFound:
            return None

    # -- the LRU ----------------------------------------------------------------------------

    async def _entries_loaded(self) -> dict[str, dict[str, float]]:
        if self._entries is None:
            loop = asyncio.get_running_loop()
            self._entries = await loop.run_in_executor(self.threads, self._read_state)
        return self._entries

    def _read_state(self) -> dict[str, dict[str, float]]:
        try:
            state = json.loads((self.dir / "cache.json").read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in state.items() if isinstance(v, dict)} if isinstance(state, dict) else {}

    async def _touch(self, sha: str) -> None:
        entries = await self._entries_loaded()
        if sha in entries:
            entries[sha]["last_used"] = time.time()
            await self._save()

    async def _record(self, sha: str, size: int) -> None:
        entries = await self._entries_loaded()
        entries[sha] = {"size": size, "last_used": time.time()}
        await self._evict()
        await self._save()

    async def _evict(self) -> None:
        entries = await self._entries_loaded()
        loop = asyncio.get_running_loop()
        total = sum(e.get("size", 0) for e in entries.values())
        for sha in sorted(entries, key=lambda s: entries[s].get("last_used", 0)):
            if total <= self.capacity_bytes:
                break
            if self._in_use[sha] or sha in self._inflight:
                continue
            if await loop.run_in_executor(self.threads, self._remove, sha):
                total -= entries.pop(sha).get("size", 0)
                log.info("image %s evicted (least recently used; the cache holds %d bytes)", sha[:12], total)

    def _remove(self, sha: str) -> bool:
        try:
            self.docker.images.remove(local_tag(sha))
            return True
        except docker.errors.ImageNotFound:
            return True
        except docker.errors.APIError as exc:  # a container still uses it
            log.info("image %s not evicted: %s", sha[:12], exc.explanation or exc)
            return False

    async def _save(self) -> None:
        entries = dict(await self._entries_loaded())
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.threads, self._write_state, entries)

    def _write_state(self, entries: dict[str, dict[str, float]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        temporary = self.dir / "cache.json.tmp"
        temporary.write_text(json.dumps(entries))
        temporary.replace(self.dir / "cache.json")


class _Progress:
    """Bytes received of a download, logged every PROGRESS_EVERY_S (with a percentage once the
    length is known)."""

    def __init__(self, sha: str) -> None:
        self.sha = sha
        self.received = 0
        self.expected: int | None = None
        self._logged = time.monotonic()

    def header(self, line: str) -> None:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            self.expected = int(value.strip())

    def add(self, n: int) -> None:
        self.received += n
        now = time.monotonic()
        if now - self._logged >= PROGRESS_EVERY_S:
            self._logged = now
            if self.expected:
                log.info("image %s: %d of %d bytes (%.0f%%)", self.sha[:12], self.received, self.expected,
                         100.0 * self.received / self.expected)  # fmt: skip
            else:
                log.info("image %s: %d bytes", self.sha[:12], self.received)


def _download_options(curl: Any) -> None:
    curl.setopt(pycurl.NOPROXY, "*")  # straight to --api-url, as every grader request
    curl.setopt(pycurl.LOW_SPEED_LIMIT, LOW_SPEED_BYTES)
    curl.setopt(pycurl.LOW_SPEED_TIME, LOW_SPEED_S)


def _error_of(body: bytes | None) -> str:
    try:
        return str(json.loads(body or b"{}").get("error", ""))[:200]
    except (ValueError, AttributeError):
        return ""
