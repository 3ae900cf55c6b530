"""A real HTTP receiver of callbacks on loopback, with scripted misbehaviour.

Each path has a script: answer `fail_status` to the first `fail_first` requests (hang instead if
`fail_status` is None), then `status`. Every request is recorded with its arrival time and
whether its signature verifies with the receiver's secret (through the shipped verify function).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from broadway.callbacks.signing import DELIVERY_HEADER, SIGNATURE_HEADER, verify

HANG = None


@dataclass
class Script:
    fail_first: int = 0
    fail_status: int | None = 503  # HANG (None): never answer those requests
    status: int = 200
    location: str | None = None  # sent with 3xx answers


@dataclass(frozen=True)
class Received:
    path: str
    delivery_id: str | None
    attempt_header: str | None
    signature: str | None
    body: bytes
    headers: dict[str, str]
    at: float
    signed_ok: bool

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _Handler(tornado.web.RequestHandler):
    def initialize(self, receiver: CallbackReceiver) -> None:
        self.receiver = receiver

    async def post(self, path: str) -> None:
        receiver = self.receiver
        request = self.request
        received = Received(
            path=request.path,
            delivery_id=request.headers.get(DELIVERY_HEADER),
            attempt_header=request.headers.get("Broadway-Delivery-Attempt"),
            signature=request.headers.get(SIGNATURE_HEADER),
            body=request.body,
            headers=dict(request.headers),
            at=time.time(),
            signed_ok=verify(receiver.secret, request.body, request.headers.get(SIGNATURE_HEADER)),
        )
        receiver.received.append(received)
        receiver.arrived.set()
        script = receiver.scripts.get(request.path, Script())
        seen = sum(1 for r in receiver.received if r.path == request.path)
        status = script.fail_status if seen <= script.fail_first else script.status
        if status is HANG:
            await receiver.release.wait()
            return
        self.set_status(status)
        if 300 <= status < 400 and script.location:
            self.set_header("Location", script.location)
        self.finish(b"{}")


class CallbackReceiver:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.scripts: dict[str, Script] = {}
        self.received: list[Received] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()  # set at stop: hanging requests end
        self.port = 0
        self._server: tornado.httpserver.HTTPServer | None = None

    def start(self) -> CallbackReceiver:
        app = tornado.web.Application([(r"(/.*)", _Handler, {"receiver": self})])
        self._server = tornado.httpserver.HTTPServer(app)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self._server.add_sockets(sockets)
        return self

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def script(self, path: str, **fields: Any) -> str:
        """Set the script of `path`; returns its URL."""
        self.scripts[path] = Script(**fields)
        return self.url(path)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()


# The secret the API under test signs with, and the receiver checks (the `receiver` fixture
# in tests/conftest.py).
SECRET = "callback-secret-" + "e" * 32
