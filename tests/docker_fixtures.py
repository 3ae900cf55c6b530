"""Real Docker for the tests that are about running stages: an engine and a busybox image."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest

from grader.executor import LABEL
from utils.images import build_image
from utils.processes import ROOT

BUSYBOX_IMAGE = "broadway-test-busybox:latest"
EXAMPLE_IMAGE = "broadway-example-grader:latest"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"these tests need a Docker engine (run `make docker`): {exc}")
    # Tests check that graders leave no container behind; start from a clean slate, since an
    # interrupted earlier session may have left some.
    for container in client.containers.list(all=True, filters={"label": LABEL}, sparse=True):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    build_image(docker_client, BUSYBOX_IMAGE)
    return BUSYBOX_IMAGE


def broadway_containers(client: docker.DockerClient) -> list[str]:
    """Ids of every container any grader started and has not removed."""
    # sparse: the ids from the list call alone. Without it the SDK inspects each container in
    # turn, and one removed in between (a stage ending) raised NotFound in the middle of a test.
    return [c.id for c in client.containers.list(all=True, filters={"label": LABEL}, sparse=True)]


@pytest.fixture(scope="session")
def example_image(docker_client: docker.DockerClient) -> str:
    """The example assignment's grader image (examples/add-assignment), as `make demo` builds it."""
    build_image(docker_client, EXAMPLE_IMAGE, ROOT / "examples" / "add-assignment")
    return EXAMPLE_IMAGE


def inspected_containers(client: docker.DockerClient, **filters: Any) -> list[Any]:
    """Containers matching these filters, each fully inspected (labels, creation time), leaving
    out any removed between the list and its inspection (the SDK's own list raises NotFound
    then: a stage ending at that moment failed a test)."""
    found = []
    for sparse in client.containers.list(filters=filters, sparse=True):
        try:
            found.append(client.containers.get(sparse.id))
        except docker.errors.NotFound:
            continue
    return found
