"""Running the API: store, application, reaper, and a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal

import tornado.httpserver
import tornado.ioloop
import tornado.netutil

from broadway import metrics
from broadway.app import make_app
from broadway.callbacks import Deliverer, make_deliverer
from broadway.config import Config
from broadway.embedded_store import EmbeddedStore, EmbeddedStoreError
from broadway.handlers.base import Services
from broadway.logs import configure_logging
from broadway.store import connect, is_store_failure
from broadway.store.courses import CourseStore
from broadway.tokens import Tokens, load_or_create, load_or_create_callback_secret

log = logging.getLogger(__name__)


def announce_tokens(tokens: Tokens, config: Config) -> None:
    """Show the operator the tokens they did not configure (printed, never logged)."""
    where = config.data_dir / "tokens.json"
    if "cluster" in tokens.unconfigured:
        print(f"Nodes can join the cluster using token: {tokens.cluster}", flush=True)
    if "client" in tokens.unconfigured:
        print(f"Clients can submit grading runs using token: {tokens.client}", flush=True)
    if "callback" in tokens.unconfigured:
        print(f"Callbacks are signed with secret: {tokens.callback}", flush=True)
    if tokens.unconfigured:
        print(f"(generated tokens are kept in {where})", flush=True)


class ApiService:
    """One API process: store connection, HTTP server and reaper, started and stopped together."""

    def __init__(self, config: Config, mongo_url: str, tokens: Tokens) -> None:
        self.config = config
        self.mongo_url = mongo_url
        self.tokens = tokens
        self.port = config.port
        self._server: tornado.httpserver.HTTPServer | None = None
        self._periodic: tornado.ioloop.PeriodicCallback | None = None
        self._releases: tornado.ioloop.PeriodicCallback | None = None
        self.deliverer: Deliverer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        config = self.config
        self.store = connect(
            self.mongo_url, timeout_s=config.store_timeout_s, operation_timeout_s=2 * config.store_timeout_s
        )
        await self.store.ensure_indexes()
        app = make_app(config, self.store, self.tokens)
        self.deliverer = make_deliverer(self.store.deliveries, self._callback_secret(), config.callback_allow_networks)
        # A course's own callback secret signs its callbacks (else the deployment's).
        self.deliverer.secret_for = CourseStore(self.store.db).callback_secret_for
        # Before the first request, so every handler sees the deliverer.
        app.settings["services"] = dataclasses.replace(app.settings["services"], deliverer=self.deliverer)
        # Jobs and runs that end with a callback wake the deliverer at once (not at its next scan).
        app.settings["services"].scheduler.on_callback_due = self.deliverer.notify
        self.services: Services = app.settings["services"]
        # Bodies over the configured limit get a JSON 413 from the handler. Tornado's own cap,
        # which answers a bare 400 and closes without reading the body, sits well above it to
        # bound memory: bodies up to 4x the limit get the JSON answer.
        self._server = tornado.httpserver.HTTPServer(
            app,
            max_body_size=config.max_body_bytes * 4,
            xheaders=True,
            idle_connection_timeout=config.idle_connection_timeout,
        )
        sockets = tornado.netutil.bind_sockets(config.port, config.host)
        self.port = sockets[0].getsockname()[1]
        self._server.add_sockets(sockets)
        self.reaper = self.services.reaper
        self._periodic = tornado.ioloop.PeriodicCallback(self.reaper.tick, config.reaper_interval * 1000)
        self._periodic.start()
        # Orca jobs whose release delay has passed join the queue (broadway/holding_pen.py).
        self._releases = tornado.ioloop.PeriodicCallback(self._release_due, config.orca_release_interval * 1000)
        self._releases.start()
        self.deliverer.start()
        log.info(
            "listening on %s; heartbeat %ds, worker timeout %gs, max attempts %d",
            self.url, config.heartbeat_interval, config.effective_worker_timeout, config.max_attempts,
        )  # fmt: skip

    async def _release_due(self) -> None:
        try:
            await self.services.holding_pen.release_due()
        except Exception as e:
            if not is_store_failure(e):
                log.exception("releasing delayed Orca jobs failed")

    async def stop(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()
        if self._releases is not None:
            self._releases.stop()
        if self._server is not None:
            self._server.stop()
            self.services.jobs_signal.notify()
            await self._server.close_all_connections()
        if self.deliverer is not None:
            await self.deliverer.stop()
        await self.store.close()

    def _callback_secret(self) -> str:
        """The signing secret: as loaded with the tokens, else configured, else kept in the data dir."""
        return (
            self.tokens.callback or self.config.callback_secret or load_or_create_callback_secret(self.config.data_dir)
        )


def run(config: Config) -> int:
    configure_logging(config.log_level, config.log_format)
    tokens = load_or_create(config.data_dir, config.cluster_token, config.client_token, config.callback_secret)
    embedded = None
    mongo_url = config.mongo_url
    if mongo_url is None:
        embedded = EmbeddedStore(config.data_dir)
        embedded.start()
        mongo_url = embedded.url
    try:
        announce_tokens(tokens, config)
        return asyncio.run(_main(config, mongo_url, tokens, embedded))
    finally:
        if embedded is not None:
            embedded.stop()


async def _main(config: Config, mongo_url: str, tokens: Tokens, embedded: EmbeddedStore | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = ApiService(config, mongo_url, tokens)
    await service.start()
    watchdog = None
    if embedded is not None:
        watchdog = tornado.ioloop.PeriodicCallback(StoreWatchdog(embedded).check, 1000)
        watchdog.start()
    print(f"Broadway API listening on {service.url}", flush=True)
    await stop.wait()
    log.info("stopping")
    if watchdog is not None:
        watchdog.stop()
    await service.stop()
    return 0


class StoreWatchdog:
    """Restarts the embedded store if its process dies (killed, crashed), on the same port and
    data, so the API recovers by itself; meanwhile requests get 503 and /health says why."""

    def __init__(self, embedded: EmbeddedStore) -> None:
        self.embedded = embedded
        self._restarting = False
        self._failed = False

    async def check(self) -> None:
        if self._restarting or not (self.embedded.exited or self._failed):
            return
        self._restarting = True
        if not self._failed:
            log.error("the embedded store exited (code %s); restarting it", self.embedded.process_returncode)
        try:
            self.embedded.spawn()  # on the loop's thread: see EmbeddedStore.spawn
            await asyncio.to_thread(self.embedded.wait_ready, 20.0)
            self._failed = False
            log.info("the embedded store is back")
            metrics.embedded_store_restarted()
        except (EmbeddedStoreError, OSError) as e:
            self._failed = True
            log.error("could not restart the embedded store: %s; retrying", e)
        finally:
            self._restarting = False
