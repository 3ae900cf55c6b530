"""Health check for operators and load balancers."""

from __future__ import annotations

from broadway import __version__
from broadway.handlers.base import APIHandler
from broadway.store import StoreUnavailable


class HealthHandler(APIHandler):
    async def get(self) -> None:
        """200 when the store answers, 503 (with the reason) when it does not."""
        services = self.services
        try:
            await services.store.ping(seconds=min(2.0, services.config.store_timeout_s))
            workers = await services.store.workers.count_alive()
        except StoreUnavailable as e:
            self.write_json({"status": "unhealthy", "store": "unreachable", "error": str(e)[:300]}, status=503)
            return
        self.write_json({"status": "ok", "store": "ok", "workers_alive": workers, "version": __version__})


default_handlers = [(r"/api/v1/health/?", HealthHandler)]
