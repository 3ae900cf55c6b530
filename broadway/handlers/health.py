"""Health check for operators and load balancers, and the API's own description."""

from __future__ import annotations

from functools import cache
from importlib import resources

from broadway import __version__
from broadway.handlers.base import APIHandler, public
from broadway.store import is_store_failure


class HealthHandler(APIHandler):
    @public
    async def get(self) -> None:
        """200 when the store answers, 503 (with the reason) when it does not."""
        services = self.services
        try:
            await services.store.ping(seconds=min(2.0, services.config.store_timeout_s))
            workers = await services.store.workers.count_alive()
        except Exception as e:
            if not is_store_failure(e):
                raise
            self.write_json({"status": "unhealthy", "store": "unreachable", "error": str(e)[:300]}, status=503)
            return
        self.write_json({"status": "ok", "store": "ok", "workers_alive": workers, "version": __version__})


@cache
def openapi_document() -> bytes:
    """broadway/openapi.yaml, read once (a file read per request would block the loop)."""
    return resources.files("broadway").joinpath("openapi.yaml").read_bytes()


class OpenApiHandler(APIHandler):
    @public
    async def get(self) -> None:
        self.set_header("Content-Type", "application/yaml; charset=UTF-8")
        self.finish(openapi_document())


default_handlers = [(r"/api/v1/health/?", HealthHandler), (r"/api/v1/openapi\.yaml", OpenApiHandler)]
