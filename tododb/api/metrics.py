"""Prometheus metrics at /metrics: request rate, latency and errors, and view positions."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tododb.api.positions import PositionWatcher


class ViewPositions(Collector):
    """Each read model's applied log position, as this API process last saw it."""

    def __init__(self, watcher: PositionWatcher) -> None:
        self.watcher = watcher

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "tododb_view_position", "Log position applied by a read model", labels=["view"]
        )
        for view, position in self.watcher.positions.items():
            gauge.add_metric([view], position)
        yield gauge


class Metrics:
    def __init__(self, watcher: PositionWatcher) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tododb_http_requests", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tododb_http_request_seconds", "HTTP request latency", ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(ViewPositions(watcher))
        self.asgi_app = make_asgi_app(self.registry)


class MetricsMiddleware:
    """Counts and times requests by route template (not raw path: ids would explode labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/metrics":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The router records the matched route in the scope it was given.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
