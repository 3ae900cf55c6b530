"""The grader's HTTP client keeps its connections alive, and survives the API closing them.

A relay in front of a real API counts the TCP connections the client opens and can close them,
as the API does on an idle timeout or a restart. No Docker here: these run without the lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from broadway.embedded_store import free_port
from broadway.server import ApiService
from grader.client import GraderClient, Registration, Unreachable
from grader.config import GraderConfig
from tests.conftest import MakeApi
from tests.helpers import CLUSTER_TOKEN, ApiClient, run_config


class ConnectionRelay:
    """Forwards TCP connections to the API; counts them, and can close the ones it holds."""

    def __init__(self, api_port: int) -> None:
        self.api_port = api_port
        self.accepted = 0
        self.open: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        # When set, each connection open now is closed on its next request, unanswered: the API
        # closing an idle connection at the moment the client sends on it.
        self.close_on_next_request: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        api_reader, api_writer = await asyncio.open_connection("127.0.0.1", self.api_port)
        self.open.append((writer, api_writer))
        for task in (self._pump(reader, api_writer, writer), self._pump(api_reader, writer, writer)):
            running = asyncio.ensure_future(task)
            self.tasks.add(running)
            running.add_done_callback(self.tasks.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, client: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await source.read(65536):
                if sink is not client and client in self.close_on_next_request:
                    self.close_on_next_request.discard(client)
                    break
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            self._close(client)

    def _close(self, client: asyncio.StreamWriter) -> None:
        for pair in [p for p in self.open if p[0] is client]:
            self.open.remove(pair)
            for writer in pair:
                writer.close()

    def close_all(self) -> None:
        """Close every connection now, as an idle timeout or a restarting API does."""
        for client, _ in list(self.open):
            self._close(client)

    def close_each_on_next_request(self) -> None:
        self.close_on_next_request = {client for client, _ in self.open}

    async def stop(self) -> None:
        self.close_all()
        self.server.close()
        await self.server.wait_closed()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def relay(api_service: ApiService) -> AsyncIterator[ConnectionRelay]:
    relay = ConnectionRelay(api_service.port)
    await relay.start()
    yield relay
    await relay.stop()


def grader_client(port: int, slots: int = 1) -> GraderClient:
    config = GraderConfig(api_url=f"http://127.0.0.1:{port}", token=CLUSTER_TOKEN, name="client-test", slots=slots)
    return GraderClient(config)


async def test_one_connection_serves_register_polls_heartbeats_and_reports(
    relay: ConnectionRelay, api: ApiClient
) -> None:
    client = grader_client(relay.server.sockets[0].getsockname()[1])
    try:
        await client.register()
        for _ in range(10):
            await client.heartbeat([])
            assert await client.poll(wait=0) is None
        await api.submit_and_start(run_config(students=5))
        while (job := await client.poll(wait=0)) is not None:
            assert await client.report(job["job_id"], "ok", True, job.get("attempt"))
        assert relay.accepted == 1, f"{relay.accepted} TCP connections for 32 requests"
        assert client.requests_sent == 1 + 20 + 6 + 5
    finally:
        client.close()


async def test_concurrent_reports_keep_their_connections(relay: ConnectionRelay, api: ApiClient) -> None:
    slots = 4
    client = grader_client(relay.server.sockets[0].getsockname()[1], slots=slots)
    try:
        await client.register()
        await api.submit_and_start(run_config(students=5 * slots))
        for _ in range(5):
            jobs = [await client.poll(wait=0) for _ in range(slots)]
            # Every slot reports at once while the heartbeat goes out, as a busy grader does.
            delivered = await asyncio.gather(
                client.heartbeat([str(j["job_id"]) for j in jobs if j]),
                *(client.report(j["job_id"], "ok", True, j.get("attempt")) for j in jobs if j),
            )
            assert all(delivered[1:]) and len(delivered) == slots + 1
        assert relay.accepted <= slots + 1, f"{relay.accepted} connections for 5 rounds of {slots + 1} requests"
    finally:
        client.close()


async def test_idle_connection_closed_by_the_api_is_replaced(relay: ConnectionRelay, api: ApiClient) -> None:
    client = grader_client(relay.server.sockets[0].getsockname()[1])
    try:
        await client.register()
        await client.heartbeat([])
        relay.close_all()
        # No Unreachable, no backoff: the next requests go out on a new connection.
        await client.heartbeat([])
        await api.submit_and_start(run_config(students=1))
        job = await client.poll(wait=5)
        assert job is not None
        assert await client.report(job["job_id"], "ok", True, job.get("attempt"))
        assert relay.accepted == 2
    finally:
        client.close()


async def test_connection_closed_as_the_request_goes_out_is_retried(relay: ConnectionRelay, api: ApiClient) -> None:
    client = grader_client(relay.server.sockets[0].getsockname()[1])
    try:
        await client.register()
        await api.submit_and_start(run_config(students=2))
        for _ in range(2):
            relay.close_each_on_next_request()
            job = await client.poll(wait=5)  # the poll dies unanswered, its retry gets the job
            assert job is not None
            relay.close_each_on_next_request()
            assert await client.report(job["job_id"], "ok", True, job.get("attempt"))
        relay.close_each_on_next_request()
        await client.heartbeat([])
        assert relay.accepted == 6
    finally:
        client.close()


async def test_api_restart_on_the_same_port_is_transparent(api_service: ApiService, make_api: MakeApi) -> None:
    client = grader_client(api_service.port)
    try:
        await client.register()
        await client.heartbeat([])
        await api_service.stop()
        await make_api(port=api_service.port)
        await client.heartbeat([])  # same worker, same store: known to the new process
        assert await client.poll(wait=0) is None
    finally:
        client.close()


async def test_secrets_stay_out_of_debug_logs(
    relay: ConnectionRelay, api: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = grader_client(relay.server.sockets[0].getsockname()[1])
    try:
        registration = await client.register()
        await client.heartbeat([])
        relay.close_each_on_next_request()
        assert await client.poll(wait=0) is None
    finally:
        client.close()
    assert caplog.records, "nothing was logged: the check below would prove nothing"
    assert CLUSTER_TOKEN not in caplog.text
    assert registration.worker_id not in caplog.text


async def test_unreachable_api_error_names_no_secret() -> None:
    client = grader_client(free_port())
    client.registration = Registration(worker_id="w" * 32, heartbeat_s=10.0)
    try:
        with pytest.raises(Unreachable) as caught:
            await client.poll(wait=0)
    finally:
        client.close()
    message = str(caught.value)
    assert "GET /grading_job" in message
    assert "w" * 32 not in message and CLUSTER_TOKEN not in message
