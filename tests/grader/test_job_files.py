"""A single job's files and response on the grader's side, without Docker: names that would leave
/job/files, sizes that do not match, and what of a stage's output counts as its response."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from grader.job_files import FetchError, FileFetcher, planned_files
from grader.response import MAX_RESPONSE_BYTES, capture_response

WORKER = "w" * 32


def entry(name: str, size: int = 1, url: str | None = None) -> dict[str, Any]:
    return {"name": name, "size": size, "url": url or f"/api/v1/grading_job/j/files/{name}"}


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ([entry("/etc/passwd")], "plain relative path"),
        ([entry("../up")], "plain relative path"),
        ([entry("a/../../b")], "plain relative path"),
        ([entry("a//b")], "plain relative path"),
        ([entry("a", url="http://elsewhere.invalid/x")], "no URL path on the API"),
        ([entry("a", url="//elsewhere.invalid/x")], "no URL path on the API"),
        ([entry("a"), entry("a/b")], "clashes"),
        ([entry("a/b"), entry("a")], "clashes"),
        ([entry("a", size=-1)], "no valid size"),
        ([entry("a", size=40), entry("b", size=40)], "--max-files"),
    ],
)
def test_bad_names_sizes_and_urls_are_refused_before_any_fetch(files: list[dict[str, Any]], words: str) -> None:
    with pytest.raises(FetchError, match=words.replace("-", r"\-")):
        planned_files({"files": files}, max_total=64)


class _Files(tornado.web.RequestHandler):
    def initialize(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies

    def get(self, name: str) -> None:
        if self.get_argument("worker_id") != WORKER or name not in self.bodies:
            self.send_error(404)
            return
        self.finish(self.bodies[name])


@pytest.fixture
async def file_server() -> Any:
    bodies: dict[str, bytes] = {}
    app = tornado.web.Application([(r"/api/v1/grading_job/j/files/(.+)", _Files, {"bodies": bodies})])
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    fetcher = FileFetcher(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", slots=1)
    yield fetcher, bodies
    fetcher.close()
    server.stop()


async def test_files_land_in_place_and_a_wrong_size_is_an_error(file_server: Any, tmp_path: Path) -> None:
    fetcher, bodies = file_server
    bodies.update({"src/main.c": b"int main;" * 5000, "README": b"hi"})
    job = {"files": [entry("src/main.c", 45000), entry("README", 2)]}
    assert await fetcher.fetch_all(job, tmp_path / "files", WORKER, 1 << 20, 10) == 45002
    assert (tmp_path / "files" / "src" / "main.c").read_bytes() == bodies["src/main.c"]
    assert (tmp_path / "files" / "README").stat().st_mode & 0o777 == 0o666, "readable by any stage user"

    bodies["big"] = b"x" * 5000
    with pytest.raises(FetchError, match="larger than the 100 bytes"):
        await fetcher.fetch_all({"files": [entry("big", 100)]}, tmp_path / "f2", WORKER, 1 << 20, 10)
    with pytest.raises(FetchError, match="came with 5000 bytes"):
        await fetcher.fetch_all({"files": [entry("big", 6000)]}, tmp_path / "f3", WORKER, 1 << 20, 10)
    with pytest.raises(FetchError, match="HTTP 404") as refused:
        await fetcher.fetch_all({"files": [entry("missing", 1)]}, tmp_path / "f4", WORKER, 1 << 20, 10)
    assert WORKER not in str(refused.value), "the worker id is a credential"


def test_response_from_result_json_or_stdout(tmp_path: Path) -> None:
    answer = {"success": True, "grade": 3}
    assert capture_response(tmp_path, b"building...\n" + json.dumps(answer).encode() + b"\n").value == answer
    assert capture_response(tmp_path, json.dumps(answer, indent=2).encode()).value == answer, "pretty-printed"
    assert capture_response(tmp_path, b"all good\n") == capture_response(tmp_path, None)
    assert capture_response(tmp_path, b"[1, 2]").value is None

    (tmp_path / "result.json").write_text(json.dumps({"success": False, "error": "no"}))
    assert capture_response(tmp_path, json.dumps(answer).encode()).value == {"success": False, "error": "no"}
    (tmp_path / "result.json").write_bytes(b" " * (MAX_RESPONSE_BYTES + 1))
    assert "larger than" in str(capture_response(tmp_path, None).error)
    (tmp_path / "result.json").unlink()
    os.mkfifo(tmp_path / "result.json")
    assert "not a regular file" in str(capture_response(tmp_path, None).error), "a FIFO does not hang the grader"
