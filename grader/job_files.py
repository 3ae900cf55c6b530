"""A single job's submitted files, fetched from the API into <job dir>/files before its first stage.

Each file is streamed to disk as it arrives (never whole in memory), under three bounds: the size
the payload declares for it, --max-files for all of them together, and one time limit for the lot.
Names come from the API, which checked them at submission; they are checked again here, since a
name is about to become a path on the grader's disk.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPClientError, HTTPRequest

# Stages run as any user, with every capability dropped: what they read must be open to all.
_DIR_MODE = 0o777
_FILE_MODE = 0o666


class FetchError(Exception):
    """The files could not be fetched or were not what the payload said: not the student's fault."""


def checked_name(name: Any) -> PurePosixPath:
    """The relative path a file name stands for; FetchError unless it stays inside files/."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise FetchError(f"file name {name!r} is not a plain relative path")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise FetchError(f"file name {name!r} is not a plain relative path")
    return path


def planned_files(job: dict[str, Any], max_total: int) -> list[tuple[PurePosixPath, int, str]]:
    """(relative path, size, url) of each file the payload names, checked before anything is fetched."""
    entries = job.get("files") or []
    if not isinstance(entries, list):
        raise FetchError("the job's `files` is not a list")
    planned: list[tuple[PurePosixPath, int, str]] = []
    seen: set[PurePosixPath] = set()
    total = 0
    for entry in entries:
        if not isinstance(entry, dict):
            raise FetchError("an entry of the job's `files` is not an object")
        path = checked_name(entry.get("name"))
        size, url = entry.get("size"), entry.get("url")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FetchError(f"file {entry.get('name')!r} has no valid size")
        # The URL is joined to --api-url: only a path on that API gets the worker id.
        if not isinstance(url, str) or not url.startswith("/") or url.startswith("//"):
            raise FetchError(f"file {entry.get('name')!r} has no URL path on the API")
        # "a" and "a/b" cannot both be files; neither can a name twice.
        if path in seen or any(parent in seen for parent in path.parents):
            raise FetchError(f"file name {entry.get('name')!r} clashes with another file's")
        seen.add(path)
        total += size
        if total > max_total:
            raise FetchError(f"the job's files come to more than the grader's --max-files ({max_total} bytes)")
        planned.append((path, size, url))
    for path in seen:
        if any(parent in seen for parent in path.parents):
            raise FetchError(f"file name {str(path)!r} clashes with another file's")
    return planned


class FileFetcher:
    """Downloads with an HTTP client of its own: each transfer sets libcurl's size cap on its
    handle, which must not stay on a handle the API calls reuse."""

    def __init__(self, api_url: str, slots: int) -> None:
        self.api_url = api_url.rstrip("/")
        self.http = CurlAsyncHTTPClient(force_instance=True, max_clients=max(slots, 1))

    def close(self) -> None:
        self.http.close()

    async def fetch_all(
        self, job: dict[str, Any], files_dir: Path, worker_id: str, max_total: int, seconds: float
    ) -> int:
        """Fetch every file of the job into files_dir; the bytes written. FetchError on any failure."""
        planned = planned_files(job, max_total)
        targets = await asyncio.to_thread(_make_directories, files_dir, [path for path, _, _ in planned])
        deadline = time.monotonic() + seconds
        written = 0
        for (path, size, url), target in zip(planned, targets, strict=True):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"fetching the job's files took more than {seconds:g}s")
            written += await self._fetch(url, target, size, worker_id, remaining, str(path))
        return written

    async def _fetch(self, url: str, target: Path, size: int, worker_id: str, seconds: float, name: str) -> int:
        # O_EXCL and O_NOFOLLOW: the file is new, in a directory only this grader has written to.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
        os.fchmod(fd, _FILE_MODE)
        received = 0
        overflow = False
        with os.fdopen(fd, "wb") as out:

            def write(chunk: bytes) -> None:
                nonlocal received, overflow
                received += len(chunk)
                if received > size:
                    overflow = True  # libcurl's own cap stops the transfer; keep nothing beyond
                    return
                _write(out, chunk)

            def prepare(curl: Any) -> None:
                curl.setopt(pycurl.NOPROXY, "*")
                curl.setopt(pycurl.MAXFILESIZE_LARGE, max(size, 1))
                # An error status fails at its headers: its body must not count against the size.
                curl.setopt(pycurl.FAILONERROR, True)

            request = HTTPRequest(
                f"{self.api_url}{url}?{urllib.parse.urlencode({'worker_id': worker_id})}",
                streaming_callback=write,
                request_timeout=seconds,
                connect_timeout=min(10.0, seconds),
                prepare_curl_callback=prepare,
                decompress_response=False,
            )
            try:
                response = await self.http.fetch(request, raise_error=False)
            except CurlError as exc:
                if exc.errno == pycurl.E_FILESIZE_EXCEEDED:
                    raise FetchError(f"file {name!r} is larger than the {size} bytes the job says") from None
                if exc.errno == pycurl.E_HTTP_RETURNED_ERROR:
                    status = re.search(r"error: (\d{3})", str(exc))
                    answer = f"HTTP {status.group(1)}" if status else _reason(exc, worker_id)
                    raise FetchError(f"cannot fetch file {name!r}: the API answered {answer}") from None
                if exc.errno == pycurl.E_OPERATION_TIMEDOUT:
                    raise FetchError(f"fetching file {name!r} timed out (the job's files get {seconds:.0f}s)") from None
                raise FetchError(f"cannot fetch file {name!r}: {_reason(exc, worker_id)}") from None
            except (HTTPClientError, OSError) as exc:
                # Messages name the file, never the URL: its query string holds the worker id.
                raise FetchError(f"cannot fetch file {name!r}: {_reason(exc, worker_id)}") from None
        if overflow:
            raise FetchError(f"file {name!r} is larger than the {size} bytes the job says")
        if response.code != 200:
            reason = "timed out" if response.code == 599 else f"HTTP {response.code}"
            raise FetchError(f"cannot fetch file {name!r}: {reason}")
        if received != size:
            raise FetchError(f"file {name!r} came with {received} bytes, the job says {size}")
        return received


def _make_directories(files_dir: Path, paths: list[PurePosixPath]) -> list[Path]:
    """files_dir and the directories the names need; the files' paths, each checked to resolve
    inside files_dir (a check for whatever the name checks could have missed)."""
    files_dir.mkdir(mode=_DIR_MODE, exist_ok=True)
    files_dir.chmod(_DIR_MODE)
    root = files_dir.resolve()
    targets = []
    for path in paths:
        current = root
        for part in path.parts[:-1]:
            current = current / part
            if current.is_symlink():
                raise FetchError(f"file name {str(path)!r} leaves the files directory")
            current.mkdir(mode=_DIR_MODE, exist_ok=True)
            current.chmod(_DIR_MODE)
        target = root / path
        if root not in target.resolve().parents:
            raise FetchError(f"file name {str(path)!r} leaves the files directory")
        targets.append(target)
    return targets


def _write(out: IO[bytes], chunk: bytes) -> None:
    out.write(chunk)


def _reason(exc: Exception, worker_id: str) -> str:
    return f"{type(exc).__name__}: {exc}".replace(worker_id, "***")
