"""Prometheus metrics at /metrics: request rate, latency and errors, and view positions.

With ``todo serve --workers N`` every worker's scrape answers for them all: each keeps
its figures in files of a directory they share (prometheus_client's multiprocess mode,
``PROMETHEUS_MULTIPROC_DIR``), and a scrape sums them.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tododb.api.positions import PositionWatcher

log = logging.getLogger(__name__)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

SHARED_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client reads it when it is imported: set, every metric of the process is
kept in a file of that directory, for a scrape of any process to sum."""

MADE_PREFIX = "tododb-metrics-"
"""Of the directories ``todo serve`` makes, followed by its process id."""

PUBLISH_SECONDS = 1.0
"""How often a worker copies its in-memory figures into the shared files."""

COUNTED: tuple[tuple[str, str, str], ...] = (
    ("tododb_append_batches", "batches", "Group-commit batches written"),
    ("tododb_append_commands", "commands", "Commands in those batches"),
    (
        "tododb_append_batch_seconds",
        "seconds",
        "Seconds spent writing those batches (a connection taken to commands answered)",
    ),
)
"""This process's group-commit sums (``GroupCommitter.figures``): name, key, help."""

MEASURED: tuple[tuple[str, str, str], ...] = (
    ("tododb_append_queued_commands", "queued", "Commands waiting for a batch"),
    ("tododb_read_waits_pending", "read_waits", "X-Min-Position reads waiting for a read model"),
)
"""This process's figures of the moment: name, key, help."""


def method_label(method: str) -> str:
    """The method as a label: clients choose it freely, so only known ones count apart."""
    return method if method in KNOWN_METHODS else "other"


class ViewPositions(Collector):
    """Each read model's applied log position, as this API process last saw it (every
    process sees the same positions)."""

    def __init__(self, watcher: PositionWatcher) -> None:
        self.watcher = watcher

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "tododb_view_position", "Log position applied by a read model", labels=["view"]
        )
        for view, position in self.watcher.positions.items():
            gauge.add_metric([view], position)
        yield gauge


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


class ProcessFigures(Collector):
    """This process's group commit (batches, their commands, the time spent writing them:
    rates give commands and seconds per batch; the commands waiting now) and its
    X-Min-Position reads waiting, read at scrape time. No labels."""

    def __init__(self, figures: Callable[[], Mapping[str, float]]) -> None:
        self.figures = figures

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        figures = self.figures()
        for name, key, text in COUNTED:
            if key in figures:  # an event store without group commit has none
                yield CounterMetricFamily(name, text, value=figures[key])
        for name, key, text in MEASURED:
            if key in figures:
                yield GaugeMetricFamily(name, text, value=figures[key])


class SharedFigures:
    """``ProcessFigures`` for a worker of ``todo serve --workers N``: copied into the
    shared files in ``path`` every ``PUBLISH_SECONDS`` by a thread, so that a scrape of
    any worker sums every worker's. Counters keep a dead worker's counts (they never go
    down); the figures of the moment count live workers only."""

    def __init__(
        self,
        figures: Callable[[], Mapping[str, float]],
        path: str,
        interval: float = PUBLISH_SECONDS,
    ) -> None:
        self.figures = figures
        self.path = path
        self.interval = interval
        self._counters = {key: Counter(name, text, registry=None) for name, key, text in COUNTED}
        self._gauges = {
            key: Gauge(name, text, registry=None, multiprocess_mode="livesum")
            for name, key, text in MEASURED
        }
        self._published: dict[str, float] = {}
        self._publishing = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The last counts published; this worker's figures of the moment out of the
        sums (a worker retired while its replacement runs, as on uvicorn's SIGHUP)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._publish_logged()
        mark_process_dead(os.getpid(), self.path)  # type: ignore[no-untyped-call]

    def publish(self) -> None:
        with self._publishing:
            figures = self.figures()
            for key, counter in self._counters.items():
                added = figures.get(key, 0.0) - self._published.get(key, 0.0)
                if added > 0:
                    counter.inc(added)
                    self._published[key] = figures[key]
            for key, gauge in self._gauges.items():
                gauge.set(figures.get(key, 0.0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._publish_logged()

    def _publish_logged(self) -> None:
        try:
            self.publish()
        except Exception:  # a figure unavailable now must not end the publishing
            log.warning("could not publish this worker's metrics", exc_info=True)


def shared_dir() -> str | None:
    """The directory the workers share, if this process is one of them."""
    return os.environ.get(SHARED_DIR_VARIABLE) or None


@contextmanager
def shared_between_workers(workers: int) -> Iterator[str | None]:
    """For ``todo serve``: with more than one worker, a directory for their metrics, in
    the environment they inherit (set before they start: prometheus_client chooses its
    mode when imported); made here and removed after. One given in
    ``PROMETHEUS_MULTIPROC_DIR`` is used, with any worker count, and emptied first (an
    earlier run's files would add to the counts)."""
    given = shared_dir()
    if given is not None:
        os.makedirs(given, exist_ok=True)
        for path in glob.glob(os.path.join(given, "*.db")):
            os.remove(path)
        yield given
        return
    if workers == 1:
        yield None
        return
    remove_orphans()
    made = tempfile.mkdtemp(prefix=f"{MADE_PREFIX}{os.getpid()}-")
    os.environ[SHARED_DIR_VARIABLE] = made
    try:
        yield made
    finally:
        os.environ.pop(SHARED_DIR_VARIABLE, None)
        shutil.rmtree(made, ignore_errors=True)


def remove_orphans(parent: str | None = None) -> None:
    """Remove the directories made by ``todo serve`` processes that are gone without
    removing theirs (killed with -9): each name holds its maker's process id. One that a
    live process still writes to (a worker outliving its maker) is kept."""
    parent = parent or tempfile.gettempdir()
    for path in glob.glob(os.path.join(parent, f"{MADE_PREFIX}*-*")):
        match = re.fullmatch(rf"{MADE_PREFIX}(\d+)-\w+", os.path.basename(path))
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            writers = _writers(path)
        except OSError:  # removed meanwhile, or not ours to read
            continue
        if not any(_alive(pid) for pid in writers):
            shutil.rmtree(path, ignore_errors=True)


def forget_dead_workers(path: str) -> None:
    """Drop the figures of the moment kept by workers that are gone (killed, then
    replaced by uvicorn): a new worker does it as it starts. Their counts stay
    (``mark_process_dead`` removes a process's live gauges only)."""
    for pid in _writers(path) - {os.getpid()}:
        if not _alive(pid):
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _writers(path: str) -> set[int]:
    """The processes whose metric files are in ``path`` (``<kind>_<pid>.db``)."""
    return {
        int(match.group(1))
        for name in os.listdir(path)
        if (match := re.fullmatch(r"[a-z_]+_(\d+)\.db", name))
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the number
        return True
    return True


class Metrics:
    """The API's metrics. ``shared``: the directory of ``todo serve --workers N``, whose
    files a scrape sums (the request metrics are then kept there, and this process's
    figures copied there by a ``SharedFigures``); ``None`` for one process."""

    def __init__(
        self,
        watcher: PositionWatcher,
        quarantined: Callable[[], dict[str, int]],
        write_figures: Callable[[], Mapping[str, float] | None],
        shared: str | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        own = None if shared else self.registry  # shared: read back from the files
        self.requests = Counter(
            "tododb_http_requests", "HTTP requests", ["method", "route", "status"], registry=own
        )
        self.latency = Histogram(
            "tododb_http_request_seconds", "HTTP request latency", ["method", "route"], registry=own
        )
        self.registry.register(ViewPositions(watcher))
        self.registry.register(Quarantined(quarantined))

        def figures() -> dict[str, float]:
            return {**(write_figures() or {}), "read_waits": watcher.pending()}

        self.publisher: SharedFigures | None = None
        if shared:
            forget_dead_workers(shared)
            MultiProcessCollector(self.registry, path=shared)  # type: ignore[no-untyped-call]
            self.publisher = SharedFigures(figures, shared)
        else:
            self.registry.register(ProcessFigures(figures))
        self.asgi_app = make_asgi_app(self.registry)
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def start(self) -> None:
        if self.publisher is not None:
            self.publisher.start()

    def stop(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()

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
