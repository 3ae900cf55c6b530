"""GET /metrics: this process's Prometheus metrics, in the text exposition format."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from broadway import metrics
from broadway.handlers.base import SELF_AUTHENTICATED, ApiError, APIHandler
from broadway.tokens import same_secret


class MetricsHandler(APIHandler):
    # Its own --metrics-token (scrapers are not clients), or open when none is set.
    access = SELF_AUTHENTICATED

    async def get(self) -> None:
        """Open unless --metrics-token is set; then Authorization: Bearer <metrics token>."""
        token = self.services.config.metrics_token
        if token and not same_secret(self.bearer_token(), token):
            self.set_header("WWW-Authenticate", 'Bearer realm="broadway-metrics"')
            raise ApiError(401, "a valid metrics token is required (Authorization: Bearer <metrics token>)")
        gauges: metrics.StoreGauges | None = self.settings.get("store_gauges")
        if gauges is not None:
            await gauges.refresh()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(metrics.exposition(gauges))


default_handlers = [(r"/metrics", MetricsHandler)]
