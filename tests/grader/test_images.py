"""Grader images with real Docker: a --build grader builds them; a grader on a second engine,
which lacks them, downloads, loads and runs them; the cache downloads once and evicts by LRU."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from grader.__main__ import instance_id
from grader.client import GraderClient
from grader.config import GraderConfig
from grader.daemon import Daemon
from grader.executor import Executor
from grader.image_builder import local_tag
from grader.image_cache import ImageCache
from tests.conftest import MakeApi
from tests.grader.conftest import finished_run, stages_of
from tests.helpers import CLUSTER_TOKEN, ApiClient, eventually
from tests.processes import GraderProcess
from tests.second_docker import SecondDocker, second_docker  # noqa: F401 - fixture

GOOD = "FROM broadway-test-busybox:latest\nRUN echo built-by-broadway > /built\n"
BAD = "FROM broadway-test-busybox:latest\nRUN echo about to fail && exit 1\n"


def sha_of(dockerfile: str) -> str:
    return hashlib.sha256(dockerfile.encode()).hexdigest()


@pytest.fixture
def built_tags(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Tags the test builds on the first engine, removed after it."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


@pytest.fixture
def engine2(second_docker: SecondDocker) -> Iterator[docker.DockerClient]:  # noqa: F811
    """The second engine, emptied of images after each test (it is shared by the module)."""
    client = second_docker.client()
    yield client
    for image in client.images.list():
        client.images.remove(image.id, force=True)
    client.close()


@asynccontextmanager
async def builder_grader(
    api_url: str, work_dir: Path, docker_client: docker.DockerClient, build_timeout_s: float = 120.0
) -> AsyncIterator[Daemon]:
    """A grader started with --build, in this process (on the first engine)."""
    config = GraderConfig(api_url=api_url, token=CLUSTER_TOKEN, work_dir=work_dir, poll_wait_s=1.0, build=True,
                          build_timeout_s=build_timeout_s)  # fmt: skip
    work_dir.mkdir(parents=True, exist_ok=True)
    executor = Executor(docker_client, config.limits, work_dir, instance_id(work_dir))
    client = GraderClient(config)
    daemon = Daemon(config, client, executor)
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)
        client.close()


async def request_build(api: ApiClient, dockerfile: str) -> None:
    body = {"dockerfile_contents": dockerfile, "dockerfile_sha_sum": sha_of(dockerfile)}
    resp = await api.request("POST", "/api/v1/grader_images", json_body=body, auth=True)
    assert resp.status == 200, resp.body


async def build_status(api: ApiClient, dockerfile: str) -> dict[str, Any]:
    resp = await api.request("GET", f"/api/v1/grader_images/status/{sha_of(dockerfile)}", auth=True)
    assert resp.status == 200, resp.body
    return dict(resp.json)


async def ended(api: ApiClient, dockerfile: str, timeout: float = 120.0) -> dict[str, Any]:
    return await eventually(lambda: build_status(api, dockerfile), lambda s: s["status"] in ("succeeded", "failed"),
                            timeout=timeout, interval=0.1)  # fmt: skip


async def build_images(make_api: MakeApi, tmp_path: Path, docker_client: docker.DockerClient,
                       *dockerfiles: str) -> tuple[ApiClient, list[dict[str, Any]]]:  # fmt: skip
    service = await make_api()
    api = ApiClient(service.url)
    for dockerfile in dockerfiles:
        await request_build(api, dockerfile)
    async with builder_grader(service.url, tmp_path / "builder", docker_client):
        results = [await ended(api, dockerfile) for dockerfile in dockerfiles]
    return api, results


async def test_a_builder_builds_an_image_that_succeeds_and_one_that_fails(
    make_api: MakeApi, tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str, built_tags: list[str]
) -> None:
    built_tags.append(local_tag(sha_of(GOOD)))
    api, (good, bad) = await build_images(make_api, tmp_path, docker_client, GOOD, BAD)
    assert good["status"] == "succeeded", good
    assert bad["status"] == "failed", bad
    assert "about to fail" in bad["error"] and "non-zero code: 1" in bad["error"], bad["error"]
    image = docker_client.images.get(local_tag(sha_of(GOOD)))  # tagged by its sha on the builder
    assert image.labels.get("broadway.image.sha") == sha_of(GOOD)
    # The archive the API serves is a gzip'd docker save holding that tag.
    worker = await api.register(slots=1)
    archive = await api.request("GET", f"/api/v1/images/{sha_of(GOOD)}.tgz", params={"worker_id": worker})
    assert archive.status == 200 and int(archive.headers["Content-Length"]) == len(archive.body) == good["size"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive.body))) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == [local_tag(sha_of(GOOD))]
    missing = await api.request("GET", f"/api/v1/images/{sha_of(BAD)}.tgz", params={"worker_id": worker})
    assert missing.status == 404


async def test_a_build_past_the_build_timeout_fails_and_is_cancelled(
    make_api: MakeApi, tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str, built_tags: list[str]
) -> None:
    # Unique, so that no earlier build's layer cache makes it quick.
    slow = f"FROM broadway-test-busybox:latest\nRUN echo sleeping-build {uuid.uuid4().hex} && sleep 60\n"
    built_tags.append(local_tag(sha_of(slow)))  # should a bug let it finish
    service = await make_api()
    api = ApiClient(service.url)
    await request_build(api, slow)
    async with builder_grader(service.url, tmp_path / "builder", docker_client, build_timeout_s=2.0):
        failed = await ended(api, slow, timeout=30)
    assert failed["status"] == "failed" and "longer than 2s (--build-timeout)" in failed["error"], failed
    assert "sleeping-build" in failed["error"]

    def sleeping_steps() -> list[str]:
        containers = docker_client.containers.list(sparse=True, filters={"ancestor": "broadway-test-busybox:latest"})
        return [c.id for c in containers if "sleep 60" in " ".join(docker_client.api.inspect_container(c.id)
                                                                   ["Config"]["Cmd"] or [])]  # fmt: skip

    async def probe() -> list[str]:
        return await asyncio.to_thread(sleeping_steps)

    # The engine cancelled the build when its request was closed: its step's container is gone.
    await eventually(probe, lambda ids: ids == [], timeout=30)


class EngineGrader(GraderProcess):
    """`python -m grader` in the host's namespace, speaking to another engine (DOCKER_HOST)."""

    def __init__(self, api_url: str, work_dir: Path, docker_host: str, *args: str) -> None:
        super().__init__(api_url, work_dir, *args, name="engine2-grader")
        self.docker_host = docker_host

    def _spawn(self, cmd: list[str], env: dict[str, str]) -> None:
        super()._spawn(cmd, {**env, "DOCKER_HOST": self.docker_host})


async def test_a_grader_on_a_second_engine_downloads_loads_and_runs_a_built_image(
    make_api: MakeApi, tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str,
    built_tags: list[str], second_docker: SecondDocker, engine2: docker.DockerClient,  # noqa: F811
) -> None:  # fmt: skip
    sha = sha_of(GOOD)
    built_tags.append(local_tag(sha))
    api, (good,) = await build_images(make_api, tmp_path, docker_client, GOOD)
    assert good["status"] == "succeeded", good
    with pytest.raises(docker.errors.ImageNotFound):
        engine2.images.get(local_tag(sha))
    grader = EngineGrader(api.base_url, tmp_path / "engine2", second_docker.host, "--slots", "3")
    grader.start()
    try:
        # Three students at once, naming the image by its tag and by its bare sha: one download.
        stage_by_tag = {"image": local_tag(sha), "entrypoint": ["cat", "/built"]}
        config = {
            "student_pipeline": [stage_by_tag, {"image": sha, "entrypoint": ["cat", "/built"]}],
            "students": [{"STUDENT_ID": f"s{i}"} for i in range(3)],
        }
        run_id = await api.submit_and_start(config)
        run = await finished_run(api, run_id, timeout=120)
    finally:
        grader.stop()
    log = grader.log()
    assert run["status"] == "succeeded", (run, log[-3000:])
    for job in run["student_statuses"]:
        assert [stage["output"].strip() for stage in stages_of(job)] == ["built-by-broadway"] * 2, job
    assert log.count("downloading it from the API") == 1, log[-3000:]
    assert "loaded in" in log
    assert engine2.images.get(local_tag(sha)).id == docker_client.images.get(local_tag(sha)).id


async def test_the_cache_downloads_once_for_many_waiters_and_evicts_the_least_recently_used(
    make_api: MakeApi, tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str,
    built_tags: list[str], engine2: docker.DockerClient,
) -> None:  # fmt: skip
    other = GOOD + "RUN echo second > /second\n"
    built_tags += [local_tag(sha_of(GOOD)), local_tag(sha_of(other))]
    api, results = await build_images(make_api, tmp_path, docker_client, GOOD, other)
    assert [r["status"] for r in results] == ["succeeded", "succeeded"], results
    first, second = sha_of(GOOD), sha_of(other)
    config = GraderConfig(api_url=api.base_url, token=CLUSTER_TOKEN, work_dir=tmp_path / "cache")
    client = GraderClient(config)
    await client.register()
    threads = ThreadPoolExecutor(max_workers=4)
    # Room for one image only: loading the second evicts the first, unless a job still uses it.
    cache = ImageCache(engine2, client, threads, tmp_path / "cache", capacity_bytes=1)
    try:
        jobs = [{"stages": [{"image": local_tag(first)}]} for _ in range(4)]
        held = await asyncio.gather(*(cache.acquire(job) for job in jobs))
        assert cache.downloads == 1 and held == [[first]] * 4
        engine2.images.get(local_tag(first))
        # While the first is in use, loading the second keeps it.
        await cache.acquire({"stages": [{"image": second}]})
        engine2.images.get(local_tag(first))
        for shas in held:
            cache.release(shas)
        cache.release([second])
        # Used again (present: no download), the second becomes the most recently used; then the
        # first, gone from the engine, is loaded again, and the second is the least recently used.
        await cache.acquire({"stages": [{"image": local_tag(second)}]})
        assert cache.downloads == 2
        cache.release([second])
        engine2.images.remove(local_tag(first), force=True)
        await cache.acquire({"stages": [{"image": first}]})
        assert cache.downloads == 3
        with pytest.raises(docker.errors.ImageNotFound):
            engine2.images.get(local_tag(second))  # the least recently used, not in use: evicted
        engine2.images.get(local_tag(first))
    finally:
        cache.close()
        client.close()
        threads.shutdown(wait=True)
