"""Prometheus metrics at /metrics: request rate, latency and errors, and view positions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tododb.api.positions import PositionWatcher

log = logging.getLogger(__name__)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The method as a label: clients choose it freely, so only known ones count apart."""
    return method if method in KNOWN_METHODS else "other"


class ViewPositions(Collector):
    """Each read model's applied log position, as this API process last saw it, and the
    X-Min-Position reads waiting for one."""

    def __init__(self, watcher: PositionWatcher) -> None:
        self.watcher = watcher

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "tododb_view_position", "Log position applied by a read model", labels=["view"]
        )
        for view, position in self.watcher.positions.items():
            gauge.add_metric([view], position)
        yield gauge
        yield GaugeMetricFamily(
            "tododb_read_waits_pending",
            "X-Min-Position reads waiting for a read model",
            value=self.watcher.pending(),
        )


class Quarantined(Collector):
    """Events quarantined per projection (read at scrape time; labels are the fixed kinds).
    A scrape while the database is away reports nothing rather than failing."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "tododb_projection_quarantined",
            "Todos whose events a projection holds in quarantine",
            labels=["projection"],
        )
        try:
            counts = self.counts()
        except Exception:  # a metrics scrape must never fail on a database outage
            log.warning("quarantine counts unavailable", exc_info=True)
            counts = {}
        for kind, count in sorted(counts.items()):
            gauge.add_metric([kind], count)
        yield gauge


class WritePath(Collector):
    """The event store's group commit in this process, read at scrape time: batches,
    their commands and the time spent writing them (rates: commands per batch, seconds
    per batch), and the commands waiting for a batch now. No labels."""

    def __init__(self, figures: Callable[[], Mapping[str, float] | None]) -> None:
        self.figures = figures

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        figures = self.figures()
        if figures is None:  # an event store without group commit
            return
        yield CounterMetricFamily(
            "tododb_append_batches", "Group-commit batches written", value=figures["batches"]
        )
        yield CounterMetricFamily(
            "tododb_append_commands", "Commands in those batches", value=figures["commands"]
        )
        yield CounterMetricFamily(
            "tododb_append_batch_seconds",
            "Seconds spent writing those batches (a connection taken to commands answered)",
            value=figures["seconds"],
        )
        yield GaugeMetricFamily(
            "tododb_append_queued_commands",
            "Commands waiting for a batch",
            value=figures["queued"],
        )


class Metrics:
    def __init__(
        self,
        watcher: PositionWatcher,
        quarantined: Callable[[], dict[str, int]],
        write_figures: Callable[[], Mapping[str, float] | None],
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tododb_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tododb_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(ViewPositions(watcher))
        self.registry.register(Quarantined(quarantined))
        self.registry.register(WritePath(write_figures))
        self.asgi_app = make_asgi_app(self.registry)
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count and time one request. Each label set's series are looked up once
        (``labels()`` validates and locks on every call: ~2% of a request's CPU); the
        labels come from fixed sets, so this map stays as bounded as the series."""
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        series[0].inc()
        series[1].observe(seconds)


class MetricsMiddleware:
    """Counts and times requests by route template (not raw path: ids would explode labels)
    and known method: every label comes from a fixed set, so the series stay bounded."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").rstrip("/") == "/metrics":
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
            method = method_label(scope.get("method", ""))
            self.metrics.record(method, route, status, time.perf_counter() - started)
