"""Each worker's ``/metrics``, ``/healthz`` and ``/readyz`` (``infra.probes``).

Metrics (every label from a fixed set: projection kinds, consumer groups, circuit states):

- projections: ``tododb_log_head``, ``tododb_projection_position``,
  ``tododb_projection_lag_events``, ``tododb_projection_lag_seconds``,
  ``tododb_projection_quarantined``, ``tododb_projection_active`` (1 if a process
  holds its lock);
- relay: ``tododb_log_head``, ``tododb_relay_position``, ``tododb_relay_lag_events``,
  ``tododb_relay_lag_seconds``, ``tododb_relay_quarantined``, ``tododb_relay_held``,
  ``tododb_relay_active``, and this process's ``tododb_relay_published_total`` and
  ``tododb_relay_publish_failures_total``;
- consumers: ``tododb_consumer_lag_events``, ``tododb_consumer_lag_seconds``,
  ``tododb_consumer_lag_read_age_seconds`` (how old those figures are),
  ``tododb_dlq_depth``, ``tododb_consumer_parked_keys``, this process's
  ``tododb_consumer_messages_total{outcome}``, and (notifications)
  ``tododb_webhook_circuits{state}``: endpoints whose circuit is closed, open, half-open.

The lag of the projections and the relay is read from PostgreSQL at scrape time (at most
once a second); a consumer's from the broker every ``lag_refresh_seconds`` by a thread
of its own, so the consumer's own loop never waits for it.

Readiness: the database answers (and the broker: for consumers, it did recently; for the
active relay, its last exchange with it succeeded), and for each job the process may run:
another process holds it (this one stands by), or its lag is 0, or its position moved
within ``probe_stall_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tododb.consumers.core import ConsumerService
from tododb.consumers.lag import GroupLag, GroupLagReader
from tododb.infra.loglag import log_head
from tododb.infra.probes import Check, Heartbeat, ProbeServer, Progress
from tododb.infra.settings import Settings
from tododb.projections.registry import ReadSide
from tododb.projections.status import (
    EVENTS_TABLE,
    ProjectionStatus,
    events_schema,
    projection_status,
)
from tododb.relay.service import Relay
from tododb.relay.status import relay_status

log = logging.getLogger(__name__)

CACHE_SECONDS = 1.0
READY_CONNECT_TIMEOUT = 2


def this_process(pid: int | None = None) -> str:
    """``host:pid`` as lock holders name themselves (``infra.leadership.holder_name``)."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def database_check(database_url: str) -> Check:
    def check() -> tuple[bool, str]:
        with psycopg.connect(database_url, connect_timeout=READY_CONNECT_TIMEOUT) as conn:
            conn.execute("SELECT 1")
        return True, "answers"

    return check


class Cached:
    """``read()`` at most once per ``seconds`` (a scrape and a probe share one read)."""

    def __init__(self, read: Callable[[], Any], seconds: float = CACHE_SECONDS) -> None:
        self.read = read
        self.seconds = seconds
        self._lock = threading.Lock()
        self._at = -1e9
        self._value: Any = None
        self._error: Exception | None = None

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at >= self.seconds:
                self._at = time.monotonic()
                try:
                    self._value, self._error = self.read(), None
                except Exception as e:
                    self._value, self._error = None, e
            if self._error is not None:
                raise self._error
            return self._value


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _job_check(
    holder: str | None, ours: set[str], progress: Progress, position: int, lag: int
) -> tuple[bool, str]:
    """Standing by (another process holds the job) is ready; else it must progress."""
    if holder is not None and holder not in ours:
        return True, f"standing by; active: {holder}"
    ok, detail = progress.check(position, lag)
    return ok, f"{'active' if holder else 'no active worker'}: {detail}"


# ---- projections ------------------------------------------------------------------------


class ProjectionsMonitor(Collector):
    def __init__(
        self,
        settings: Settings,
        read_side: ReadSide,
        kinds: tuple[str, ...],
        processes: Callable[[], set[str]],
    ) -> None:
        self.settings = settings
        self.read_side = read_side
        self.kinds = kinds
        self.processes = processes
        """``host:pid`` of the processes of this worker that run projections."""
        self.progress = {k: Progress(settings.probe_stall_seconds) for k in kinds}
        self.status = Cached(self._read)

    def _read(self) -> tuple[int, list[ProjectionStatus]]:
        with self.read_side.connect() as conn:
            head = log_head(conn, events_schema(self.read_side), EVENTS_TABLE)
        return head, projection_status(self.read_side, head, self.kinds)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            head, statuses = self.status.get()
        except Exception:
            log.warning("projection status unavailable", exc_info=True)
            return
        yield GaugeMetricFamily("tododb_log_head", "Last position of the event log", value=head)
        families = {
            "position": _gauge(
                "tododb_projection_position", "Log position applied", ["projection"]
            ),
            "lag": _gauge("tododb_projection_lag_events", "Events not applied yet", ["projection"]),
            "lag_seconds": _gauge(
                "tododb_projection_lag_seconds",
                "Age of the oldest event not applied yet (0 when caught up)",
                ["projection"],
            ),
            "quarantined": _gauge(
                "tododb_projection_quarantined",
                "Todos whose events are held in quarantine",
                ["projection"],
            ),
        }
        active = _gauge(
            "tododb_projection_active", "1 if a process holds the projection", ["projection"]
        )
        for s in statuses:
            for attribute, family in families.items():
                family.add_metric([s.name], getattr(s, attribute))
            active.add_metric([s.name], int(s.active_process is not None))
        yield from families.values()
        yield active

    def ready_checks(self) -> dict[str, Check]:
        checks: dict[str, Check] = {"database": database_check(self.read_side.database_url)}
        for kind in self.kinds:
            checks[f"projection:{kind}"] = self._job(kind)
        return checks

    def _job(self, kind: str) -> Check:
        def check() -> tuple[bool, str]:
            _, statuses = self.status.get()
            s = next(x for x in statuses if x.name == kind)
            return _job_check(
                s.active_process, self.processes(), self.progress[kind], s.position, s.lag
            )

        return check


def projection_probes(
    settings: Settings,
    read_side: ReadSide,
    kinds: tuple[str, ...],
    processes: Callable[[], set[str]],
    *,
    alive: dict[str, Check] | None = None,
) -> ProbeServer:
    monitor = ProjectionsMonitor(settings, read_side, kinds, processes)
    registry = CollectorRegistry()
    registry.register(monitor)
    return ProbeServer(
        settings.probe_host,
        settings.probe_port,
        registry,
        alive=alive or {"process": lambda: (True, "alive")},
        ready=monitor.ready_checks(),
        role="projections",
    )


# ---- relay --------------------------------------------------------------------------------


class RelayMonitor(Collector):
    def __init__(self, settings: Settings, database_url: str, relay: Relay | None = None) -> None:
        self.settings = settings
        self.database_url = database_url
        self.relay = relay
        self.progress = Progress(settings.probe_stall_seconds)
        self.status = Cached(self._read)

    def _read(self) -> dict[str, Any]:
        return relay_status(
            self.database_url, self.settings.db_schema, connect_timeout=READY_CONNECT_TIMEOUT
        )

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        if self.relay is not None:
            yield CounterMetricFamily(
                "tododb_relay_published",
                "Messages the broker acknowledged to this process (re-sends included)",
                value=self.relay.published,
            )
            yield CounterMetricFamily(
                "tododb_relay_publish_failures",
                "Failed publish attempts of this process",
                value=self.relay.failures,
            )
        try:
            status = self.status.get()
        except Exception:
            log.warning("relay status unavailable", exc_info=True)
            return
        yield GaugeMetricFamily(
            "tododb_log_head", "Last position of the event log", value=status["head"]
        )
        for key, name, doc in (
            ("position", "tododb_relay_position", "Log position published"),
            ("lag", "tododb_relay_lag_events", "Events not published yet"),
            (
                "lag_seconds",
                "tododb_relay_lag_seconds",
                "Age of the oldest event not published yet (0 when caught up)",
            ),
            ("quarantined", "tododb_relay_quarantined", "Events that could not be published"),
            ("held", "tododb_relay_held", "Events held behind quarantined ones"),
        ):
            yield GaugeMetricFamily(name, doc, value=status[key])
        yield GaugeMetricFamily(
            "tododb_relay_active", "1 if a relay holds the lock", value=int(status["active"])
        )

    def ready_checks(self) -> dict[str, Check]:
        def job() -> tuple[bool, str]:
            s = self.status.get()
            return _job_check(
                s["active_process"], {this_process()}, self.progress, s["position"], s["lag"]
            )

        checks = {"database": database_check(self.database_url), "relay": job}
        if self.relay is not None:
            relay = self.relay
            checks["broker"] = lambda: relay.broker
        return checks


def relay_probes(
    settings: Settings, database_url: str, relay: Relay, heartbeat: Heartbeat
) -> ProbeServer:
    monitor = RelayMonitor(settings, database_url, relay)
    registry = CollectorRegistry()
    registry.register(monitor)
    return ProbeServer(
        settings.probe_host,
        settings.probe_port,
        registry,
        alive={"event_loop": heartbeat.check},
        ready=monitor.ready_checks(),
        role="relay",
    )


# ---- consumers ----------------------------------------------------------------------------


class LagWatcher:
    """Reads the group's lag from the broker every ``lag_refresh_seconds``, in a thread
    with an event loop of its own; ``latest`` is the last reading and ``at`` its time."""

    def __init__(self, settings: Settings, group: str) -> None:
        self.settings = settings
        self.group = group
        self.latest: GroupLag | None = None
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LagWatcher:
        self._thread = threading.Thread(target=self._run, name=f"lag-{self.group}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=20)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        reader = GroupLagReader(
            self.settings, timeout=max(self.settings.kafka_request_timeout_ms / 1000, 1.0)
        )
        try:
            while not self._stop.is_set():
                self.latest = await reader.read(self.group)
                self.at = time.monotonic()
                await asyncio.to_thread(self._stop.wait, self.settings.lag_refresh_seconds)
        finally:
            await reader.close()

    def age(self) -> float | None:
        return None if self.at is None else time.monotonic() - self.at


class ConsumerMonitor(Collector):
    def __init__(self, settings: Settings, database_url: str, service: ConsumerService) -> None:
        self.settings = settings
        self.database_url = database_url
        self.service = service
        self.group = service.group_id
        self.watcher = LagWatcher(settings, self.group)
        self.progress = Progress(settings.probe_stall_seconds)
        self.circuits = Cached(self._circuits) if service.name == "notifications" else None

    def _circuits(self) -> dict[str, int]:
        with psycopg.connect(self.database_url, connect_timeout=READY_CONNECT_TIMEOUT) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE circuit_open_until IS NULL), "
                "count(*) FILTER (WHERE circuit_open_until > now()), "
                "count(*) FILTER (WHERE circuit_open_until <= now()) "
                "FROM notifications.webhooks WHERE deleted_at IS NULL"
            ).fetchone()
        closed, open_, half = row or (0, 0, 0)
        return {"closed": int(closed), "open": int(open_), "half-open": int(half)}

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        group = [self.group]
        counters = self.service.counters
        messages = CounterMetricFamily(
            "tododb_consumer_messages",
            "Messages this process handled, by outcome",
            labels=["group", "outcome"],
        )
        for outcome in ("handled", "duplicates", "dead_lettered", "retries", "parked"):
            messages.add_metric([*group, outcome], getattr(counters, outcome))
        yield messages
        parked = _gauge(
            "tododb_consumer_parked_keys", "Keys (todos) parked in the group", ["group"]
        )
        parked.add_metric(group, self.service.parked_count())
        yield parked
        lag = self.watcher.latest
        if lag is not None and lag.lag is not None:
            for name, doc, value in (
                ("tododb_consumer_lag_events", "Messages not consumed yet", lag.lag),
                (
                    "tododb_consumer_lag_seconds",
                    "Age of the oldest message not consumed yet (0 when caught up)",
                    lag.lag_seconds,
                ),
                ("tododb_dlq_depth", "Dead letters not redriven", lag.dlq_depth),
            ):
                if value is not None:
                    family = _gauge(name, doc, ["group"])
                    family.add_metric(group, value)
                    yield family
        age = self.watcher.age()
        if age is not None:
            family = _gauge(
                "tododb_consumer_lag_read_age_seconds",
                "Seconds since the lag was last read from the broker",
                ["group"],
            )
            family.add_metric(group, age)
            yield family
        if self.circuits is not None:
            try:
                states = self.circuits.get()
            except Exception:
                log.warning("webhook circuits unavailable", exc_info=True)
                return
            family = _gauge(
                "tododb_webhook_circuits", "Webhook endpoints by circuit state", ["state"]
            )
            for state, count in states.items():
                family.add_metric([state], count)
            yield family

    def ready_checks(self) -> dict[str, Check]:
        return {
            "database": database_check(self.database_url),
            "broker": self._broker,
            "group": self._group,
        }

    def _fresh(self) -> GroupLag | None:
        age = self.watcher.age()
        stale = 3 * self.settings.lag_refresh_seconds + 15
        if age is None or age > stale:
            return None
        return self.watcher.latest

    def _broker(self) -> tuple[bool, str]:
        lag = self._fresh()
        if lag is None:
            return False, "no recent reading of the group's offsets"
        if lag.error is not None:
            return False, lag.error
        return True, f"group {self.group}: {lag.state}, {len(lag.members)} members"

    def _group(self) -> tuple[bool, str]:
        lag = self._fresh()
        if lag is None or lag.lag is None:
            return False, "lag unknown"
        return self.progress.check(lag.committed, lag.lag)


def consumer_probes(
    settings: Settings, database_url: str, service: ConsumerService, heartbeat: Heartbeat
) -> tuple[ProbeServer, LagWatcher]:
    monitor = ConsumerMonitor(settings, database_url, service)
    registry = CollectorRegistry()
    registry.register(monitor)
    probes = ProbeServer(
        settings.probe_host,
        settings.probe_port,
        registry,
        alive={"event_loop": heartbeat.check},
        ready=monitor.ready_checks(),
        role=service.group_id,
    )
    return probes, monitor.watcher


# ---- running a worker with its probes ---------------------------------------------------------


Main = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def beating(main: Main, heartbeat: Heartbeat, every: float = 1.0) -> Main:
    """``main`` plus a task that beats ``heartbeat`` while the event loop turns."""

    async def run(stop: asyncio.Event) -> None:
        async def beat() -> None:
            while True:
                heartbeat.beat()
                await asyncio.sleep(every)

        task = asyncio.create_task(beat())
        try:
            await main(stop)
        finally:
            task.cancel()

    return run
