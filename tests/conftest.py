"""Shared fixtures: one embedded store per test session, a fresh database and API per test."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broadway.config import Config
from broadway.embedded_store import EmbeddedStore
from broadway.server import ApiService
from broadway.tokens import Tokens
from tests.api.callback_receiver import SECRET as CALLBACK_SECRET
from tests.api.callback_receiver import CallbackReceiver
from tests.helpers import CLIENT_TOKEN, CLUSTER_TOKEN, ApiClient

TOKENS = Tokens(cluster=CLUSTER_TOKEN, client=CLIENT_TOKEN, unconfigured=frozenset())


@pytest.fixture(scope="session")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    """A real nx-27017 server over TCP, shared by the session; tests keep apart by database name."""
    store = EmbeddedStore(tmp_path_factory.mktemp("store"))
    store.start()
    yield store
    store.stop()


@pytest.fixture
def mongo_url(store_server: EmbeddedStore) -> str:
    return f"mongodb://127.0.0.1:{store_server.port}/t_{uuid.uuid4().hex[:16]}"


def test_config(**overrides: Any) -> Config:
    defaults: dict[str, Any] = {"port": 0, "heartbeat_interval": 1, "worker_timeout": 3.0, "poll_recheck_interval": 0.1}
    defaults.update(overrides)
    return dataclasses.replace(Config(), **defaults)


MakeApi = Callable[..., Awaitable[ApiService]]


@pytest.fixture
async def make_api(mongo_url: str, tmp_path: Path) -> AsyncIterator[MakeApi]:
    """Factory: start an in-process API on a free port over this test's database."""
    started: list[ApiService] = []

    async def factory(**overrides: Any) -> ApiService:
        overrides.setdefault("data_dir", tmp_path)
        service = ApiService(test_config(**overrides), mongo_url, TOKENS)
        await service.start()
        started.append(service)
        return service

    yield factory
    for service in started:
        await service.stop()


@pytest.fixture
async def api_service(make_api: MakeApi) -> ApiService:
    return await make_api()


@pytest.fixture
def api(api_service: ApiService) -> ApiClient:
    return ApiClient(api_service.url)


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    """A callback receiver on loopback checking signatures with SECRET; stopped after the test."""
    started = CallbackReceiver(CALLBACK_SECRET).start()
    yield started
    await started.stop()
