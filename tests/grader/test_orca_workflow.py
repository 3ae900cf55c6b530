"""Orca's workflow end to end, real Docker throughout: an LMS on loopback PUTs a GradingJobConfig
naming an image still to be built; the job waits in the holding pen; a grader started with
--build (first engine) builds it; a grader on a second engine, which lacks the image, downloads
and loads it, runs the grading script on the submission it downloads from the LMS, and the LMS
receives the GradingJobResult, signed."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from grader.image_builder import local_tag
from tests.api.callback_receiver import SECRET, CallbackReceiver
from tests.conftest import MakeApi
from tests.file_server import serving
from tests.grader.test_images import EngineGrader, builder_grader, ended, engine2  # noqa: F401 - fixture
from tests.helpers import ApiClient, eventually
from tests.second_docker import SecondDocker, second_docker  # noqa: F401 - fixture

# The grader image: the course's grading script baked in.
DOCKERFILE = (
    "FROM broadway-test-busybox:latest\n"
    "RUN printf '#!/bin/sh\\ngrep -c correct \"$1\"\\n' > /grade.sh && chmod 755 /grade.sh\n"
)
SHA = hashlib.sha256(DOCKERFILE.encode()).hexdigest()


@pytest.fixture
def lms_files(tmp_path: Path) -> Iterator[str]:
    """The LMS's file store on loopback: a student's submission as a tar.gz."""
    root = tmp_path / "lms-files"
    root.mkdir()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        data = b"correct\nwrong\ncorrect\n"
        info = tarfile.TarInfo("answers.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (root / "submission.tar.gz").write_bytes(archive.getvalue())
    with serving(root) as url:
        yield url


@pytest.fixture
def built_tag(docker_client: docker.DockerClient) -> Iterator[str]:
    yield local_tag(SHA)
    try:
        docker_client.images.remove(local_tag(SHA), force=True)
    except docker.errors.ImageNotFound:
        pass


def grading_job(files_url: str, response_url: str, key: str, script: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "key": key,
        "collation": {"type": "user", "id": "student-1"},
        "metadata_table": {},
        "files": {"submission": {"url": f"{files_url}/submission.tar.gz", "mime_type": "application/gzip",
                                 "should_replace_paths": False}},
        "priority": 0,
        "script": script,
        "response_url": response_url,
        "grader_image_sha": SHA,
    }  # fmt: skip


async def test_a_held_job_runs_on_a_grader_that_lacked_its_image(
    make_api: MakeApi, tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str, built_tag: str,
    receiver: CallbackReceiver, lms_files: str, second_docker: SecondDocker, engine2: docker.DockerClient,  # noqa: F811
) -> None:  # fmt: skip
    api = ApiClient((await make_api(callback_secret=SECRET)).url)
    build = {"dockerfile_contents": DOCKERFILE, "dockerfile_sha_sum": SHA}
    assert (await api.request("POST", "/api/v1/grader_images", json_body=build, auth=True)).status == 200
    grade = [{"cmd": ["/grade.sh", "$EXTRACTED/submission/answers.txt"], "on_complete": "output"}]
    broken = [{"cmd": ["/grade.sh", "$EXTRACTED/submission/missing.txt"]}]  # grep fails: no on_fail, abort
    jobs = {}
    for key, script in (("graded", grade), ("broken", broken)):
        body = grading_job(lms_files, receiver.script(f"/lms/{key}"), key, script)
        headers = {"x-api-key": api.client_token}
        resp = await api.request("PUT", "/api/v1/grading_queue", headers=headers, json_body=body)
        assert resp.status == 200 and resp.json["status"]["status"] == "held", resp.body
        jobs[key] = resp.json["status"]["id"]
    async with builder_grader(api.base_url, tmp_path / "builder", docker_client):
        assert (await ended(api, DOCKERFILE))["status"] == "succeeded"
    pen = await api.request("GET", f"/api/v1/holding_pen/{jobs['graded']}/status", auth=True)
    assert not pen.json["in_holding_pen"], pen.body
    grader = EngineGrader(api.base_url, tmp_path / "engine2", second_docker.host, "--slots", "2")
    grader.start()
    try:
        for key in jobs:
            await eventually(lambda k=key: _received(receiver, f"/lms/{k}"), bool, timeout=120)  # type: ignore[misc]
    finally:
        grader.stop()
    log = grader.log()
    assert log.count("downloading it from the API") == 1, log[-3000:]
    (graded,) = receiver.at("/lms/graded")
    assert graded.signed_ok
    assert graded.json["key"] == "graded" and graded.json.get("output") == "2", graded.json
    (response,) = graded.json["shell_responses"]
    assert response["cmd"] == ["/grade.sh", "$EXTRACTED/submission/answers.txt"] and response["status_code"] == 0
    (failed,) = receiver.at("/lms/broken")
    assert "output" not in failed.json and failed.json["shell_responses"][0]["status_code"] != 0, failed.json
    statuses = {key: (await api.request("GET", f"/api/v1/grading_queue/{job}/status", auth=True)).json["status"]
                for key, job in jobs.items()}  # fmt: skip
    assert statuses == {"graded": "succeeded", "broken": "failed"}


async def _received(receiver: CallbackReceiver, path: str) -> list[Any]:
    return receiver.at(path)
