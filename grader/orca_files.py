"""An Orca job's files: downloaded from their URLs, unpacked by MIME type, paths replaced.

Laid out as Orca's worker does (worker/orca_grader/container/build_script/preprocess/), under the
job directory, which the container sees at /job:

    /job/downloaded/<name>/<basename of the URL's path>   the file as downloaded   ($DOWNLOADED)
    /job/extracted/<name>/...                              the archive's contents,
                                                           or a copy of a plain file ($EXTRACTED)
    /job/build                                             empty, for the script     ($BUILD)

The script's commands, working directories and condition paths name these as $DOWNLOADED,
$EXTRACTED and $BUILD; the runner substitutes them (and, as Orca does, turns the real paths back
into the placeholders in what it reports). A file with `should_replace_paths` has the same
placeholders replaced inside every file extracted from it (a javac argument file, say).

Archives: application/zip, application/x-tar, application/x-gtar (tar + gzip) and
application/gzip: a gzip'd tar (what a .tar.gz is usually sent as) is unpacked as one, any other
gzip is one file, its name without .gz. Other types are copied as they are. Every
download is http(s) only (redirects too), capped in size and time; unpacking writes regular
files and directories only (links and devices are skipped), never outside the file's directory,
and counts what it writes against the job directory's size limit.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import tarfile
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pycurl

from broadway.orca.config import GZIP_TYPES, TAR_GZ_TYPES, TAR_TYPES, ZIP_TYPES

# Would be grader flags (--orca-max-download, --orca-download-timeout); defaults for now.
MAX_DOWNLOAD_BYTES = 256 << 20
DOWNLOAD_TIMEOUT_S = 120.0
MAX_ARCHIVE_MEMBERS = 20_000

CONTAINER_ROOT = "/job"
PLACEHOLDERS = {"$DOWNLOADED": "downloaded", "$EXTRACTED": "extracted", "$BUILD": "build"}

# A tar header block, with the "ustar" magic at offset 257.
TAR_BLOCK = 512
_DIR_MODE = 0o777
_FILE_MODE = 0o666
_CHUNK = 1 << 16


class OrcaFileError(Exception):
    """A file could not be downloaded or unpacked; the message names the file, never its URL
    (a signed URL is a credential)."""


def container_paths() -> dict[str, str]:
    """Each placeholder and the directory it stands for in the container."""
    return {placeholder: f"{CONTAINER_ROOT}/{name}" for placeholder, name in PLACEHOLDERS.items()}


def prepare_dirs(job_dir: Path) -> None:
    for name in PLACEHOLDERS.values():
        _mkdir(job_dir / name)


def fetch_files(
    files: dict[str, Any],
    job_dir: Path,
    max_total_bytes: int,
    cancelled: Callable[[], bool] = lambda: False,
    seconds: float = DOWNLOAD_TIMEOUT_S,
) -> None:
    """Download, unpack and path-replace every file into job_dir; OrcaFileError on the first failure."""
    prepare_dirs(job_dir)
    deadline = time.monotonic() + seconds
    budget = _Budget(max_total_bytes)
    for name, info in files.items():
        if not isinstance(info, dict) or not _plain_segment(name):
            raise OrcaFileError(f"file {name!r}: not a valid entry of `files`")
        url, mime = info.get("url"), str(info.get("mime_type") or "").lower()
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            raise OrcaFileError(f"file {name!r}: its URL is not http:// or https://")
        download_dir, extract_dir = job_dir / "downloaded" / name, job_dir / "extracted" / name
        _mkdir(download_dir)
        _mkdir(extract_dir)
        base = _file_name(url, name)
        downloaded = download_dir / base
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OrcaFileError(f"file {name!r}: the job's downloads took more than {seconds:g}s")
        size = download(url, downloaded, min(MAX_DOWNLOAD_BYTES, budget.left), remaining, name, cancelled)
        budget.spend(size, name)
        extracted = unpack(downloaded, mime, extract_dir, budget, name)
        if info.get("should_replace_paths"):
            replace_paths(extracted)


def download(url: str, target: Path, max_bytes: int, seconds: float, name: str, cancelled: Callable[[], bool]) -> int:
    """Stream url into target (a new file); the bytes written. OrcaFileError on any failure."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
    os.fchmod(fd, _FILE_MODE)
    received = 0
    too_big = False
    curl = pycurl.Curl()
    with os.fdopen(fd, "wb") as out:

        def write(chunk: bytes) -> int | None:
            nonlocal received, too_big
            received += len(chunk)
            if received > max_bytes:  # a server that sends no Content-Length: stop it here
                too_big = True
                return 0  # libcurl takes a short write as "abort"
            out.write(chunk)
            return None

        def progress(*_: int) -> int:
            return 1 if cancelled() else 0

        try:
            curl.setopt(pycurl.URL, url)
            # No file://, ftp:// or gopher:// here, not even through a redirect.
            protocols = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
            curl.setopt(pycurl.PROTOCOLS, protocols)
            curl.setopt(pycurl.REDIR_PROTOCOLS, protocols)
            curl.setopt(pycurl.FOLLOWLOCATION, True)
            curl.setopt(pycurl.MAXREDIRS, 5)
            curl.setopt(pycurl.FAILONERROR, True)
            curl.setopt(pycurl.NOSIGNAL, True)
            curl.setopt(pycurl.TIMEOUT_MS, max(int(seconds * 1000), 1))
            curl.setopt(pycurl.CONNECTTIMEOUT_MS, max(int(min(seconds, 15.0) * 1000), 1))
            curl.setopt(pycurl.MAXFILESIZE_LARGE, max(max_bytes, 1))
            curl.setopt(pycurl.WRITEFUNCTION, write)
            curl.setopt(pycurl.NOPROGRESS, False)
            curl.setopt(pycurl.XFERINFOFUNCTION, progress)
            curl.perform()
        except pycurl.error as exc:
            code = exc.args[0] if exc.args else 0
            if too_big or code == pycurl.E_FILESIZE_EXCEEDED:
                raise OrcaFileError(f"file {name!r}: larger than the grader's {max_bytes} bytes") from None
            if code == pycurl.E_HTTP_RETURNED_ERROR:
                status = curl.getinfo(pycurl.RESPONSE_CODE)
                raise OrcaFileError(f"file {name!r}: the server answered HTTP {status}") from None
            if code == pycurl.E_OPERATION_TIMEDOUT:
                raise OrcaFileError(f"file {name!r}: the download timed out (the files get {seconds:.0f}s)") from None
            if code == pycurl.E_ABORTED_BY_CALLBACK:
                raise OrcaFileError(f"file {name!r}: the download was stopped (job cancelled)") from None
            reason = curl.errstr() or str(exc)
            raise OrcaFileError(f"file {name!r}: the download failed: {_without(reason, url)}") from None
        finally:
            curl.close()
    return received


def unpack(source: Path, mime: str, into: Path, budget: _Budget, name: str) -> Path:
    """The file's contents in `into`; the path extracted (the directory, or the one file)."""
    try:
        if mime in ZIP_TYPES:
            _unzip(source, into, budget, name)
        elif mime in TAR_TYPES or mime in TAR_GZ_TYPES or (mime in GZIP_TYPES and _is_gzipped_tar(source)):
            _untar(source, into, budget, name, compressed=mime not in TAR_TYPES)
        elif mime in GZIP_TYPES:
            stem = source.name[: -len(".gz")] if source.name.endswith(".gz") else source.name
            target = into / (stem or name)
            with gzip.open(source, "rb") as data:
                _write_file(data, target, budget, name)
            return target
        else:
            target = into / source.name
            with open(source, "rb") as data:
                _write_file(data, target, budget, name)
            return target
    except (zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile, EOFError, ValueError) as exc:
        raise OrcaFileError(f"file {name!r}: not a valid {mime} archive ({exc})") from None
    return into


def replace_paths(path: Path) -> None:
    """Replace $DOWNLOADED, $EXTRACTED and $BUILD with their container paths in every regular
    file under path, as Orca does for a file with `should_replace_paths`."""
    replacements = [(key.encode(), value.encode()) for key, value in container_paths().items()]
    for file in _regular_files(path):
        data = file.read_bytes()
        edited = data
        for key, value in replacements:
            edited = edited.replace(key, value)
        if edited != data:
            file.write_bytes(edited)


class _Budget:
    """Bytes the job's files may still take on disk (the job directory's limit)."""

    def __init__(self, total: int) -> None:
        self.left = total

    def spend(self, size: int, name: str) -> None:
        self.left -= size
        if self.left < 0:
            raise OrcaFileError(f"file {name!r}: the job's files take more than the grader's job directory limit")


def _unzip(source: Path, into: Path, budget: _Budget, name: str) -> None:
    with zipfile.ZipFile(source) as archive:
        members = archive.infolist()
        if len(members) > MAX_ARCHIVE_MEMBERS:
            raise OrcaFileError(f"file {name!r}: more than {MAX_ARCHIVE_MEMBERS} entries in the archive")
        for member in members:
            mode = member.external_attr >> 16
            if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):
                continue  # a symlink (or stranger) entry: not followed, not made
            target = _member_path(into, member.filename, name)
            if target is None:
                continue
            if member.is_dir():
                _mkdirs(into, target)
                continue
            _mkdirs(into, target.parent)
            with archive.open(member) as data:
                _write_file(data, target, budget, name)


def _is_gzipped_tar(source: Path) -> bool:
    """Whether a gzip file holds a tar archive: the POSIX magic of its first header block."""
    try:
        with gzip.open(source, "rb") as data:
            header = data.read(TAR_BLOCK)
    except (gzip.BadGzipFile, EOFError, OSError):
        return False
    return len(header) == TAR_BLOCK and header[257:262] == b"ustar"


def _untar(source: Path, into: Path, budget: _Budget, name: str, compressed: bool) -> None:
    with tarfile.open(source, mode="r:gz" if compressed else "r:") as archive:
        count = 0
        for member in archive:
            count += 1
            if count > MAX_ARCHIVE_MEMBERS:
                raise OrcaFileError(f"file {name!r}: more than {MAX_ARCHIVE_MEMBERS} entries in the archive")
            if not (member.isfile() or member.isdir()):
                continue  # links, devices, FIFOs: skipped
            target = _member_path(into, member.name, name)
            if target is None:
                continue
            if member.isdir():
                _mkdirs(into, target)
                continue
            _mkdirs(into, target.parent)
            data = archive.extractfile(member)
            if data is not None:
                with data:
                    _write_file(data, target, budget, name)


def _member_path(into: Path, member: str, name: str) -> Path | None:
    """Where an archive entry goes; None for the archive's own root ("./"). An entry that would
    leave the directory fails the file: it is no accident."""
    cleaned = posixpath.normpath(member.replace("\\", "/"))
    if cleaned in (".", ""):
        return None
    parts = PurePosixPath(cleaned).parts
    if cleaned.startswith("/") or ".." in parts or "\x00" in cleaned:
        raise OrcaFileError(f"file {name!r}: the archive entry {member[:200]!r} points outside its directory")
    return into.joinpath(*parts)


def _mkdirs(root: Path, target: Path) -> None:
    current = root
    for part in target.relative_to(root).parts:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise OrcaFileError(f"archive entry {str(target.relative_to(root))!r} clashes with another entry")
        _mkdir(current)


def _write_file(data: IO[bytes] | gzip.GzipFile, target: Path, budget: _Budget, name: str) -> None:
    if target.is_symlink() or target.is_dir():
        raise OrcaFileError(f"file {name!r}: the entry {target.name!r} clashes with another entry")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, _FILE_MODE)
    os.fchmod(fd, _FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        while chunk := data.read(_CHUNK):
            budget.spend(len(chunk), name)  # a zip bomb stops here, not when the disk is full
            out.write(chunk)


def _regular_files(path: Path) -> Iterator[Path]:
    if path.is_symlink():
        return
    if path.is_file():
        yield path
        return
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for file in files:
            full = Path(root, file)
            if not full.is_symlink() and full.is_file():
                yield full


def _file_name(url: str, name: str) -> str:
    """The URL path's last segment, as Orca names the download; the file's own name if none."""
    base = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    return base if _plain_segment(base) else name


def _plain_segment(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and "/" not in value
        and "\\" not in value
        and "\x00" not in value
        and len(value) <= 255
    )


def _mkdir(path: Path) -> None:
    path.mkdir(mode=_DIR_MODE, parents=False, exist_ok=True)
    path.chmod(_DIR_MODE)  # stages run as any user, with every capability dropped


def _without(text: str, url: str) -> str:
    return text.replace(url, "<url>")
