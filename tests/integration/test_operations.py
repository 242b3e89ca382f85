"""Operating tododb on real servers: lag in events and seconds that grows while a worker
is stopped and drains when it runs again (a projection, the relay, a consumer group),
worker probes that tell the truth (``/readyz`` fails with the database down), JSON log
lines, and the whole pipeline in `todo status` and ``GET /v1/admin/status``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.conftest import TEST_SECRET, wait_until
from tests.downstream import eventually, kafka_settings, running, scrape, unique
from tests.faults import DisposablePostgres
from tests.servers import free_port, json_log_lines, process_env
from tododb.consumers.runner import AnalyticsService
from tododb.devservers.tansu import BrokerHandle
from tododb.entrypoints.bootstrap import build_application, build_read_side, build_relay
from tododb.entrypoints.supervisor import todo_command
from tododb.infra.probes import ProbeServer
from tododb.infra.settings import Settings
from tododb.monitoring.pipeline import pipeline_status, this_api
from tododb.monitoring.workers import (
    ConsumerMonitor,
    RelayMonitor,
    projection_probes,
    this_process,
)
from tododb.projections.registry import KINDS, ReadSide
from tododb.projections.worker import run_projection

pytestmark = pytest.mark.integration


def metric(base: str, name: str, **labels: str) -> float | None:
    return scrape(base).get((name, tuple(sorted(labels.items()))))


def probe(base: str, path: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{base}{path}", timeout=10)
    return answer.status_code, answer.json()


def probes_of(monitor: RelayMonitor | ConsumerMonitor) -> ProbeServer:
    """The probe server a worker serves for ``monitor`` (/metrics, /readyz), on a free
    port."""
    registry = CollectorRegistry()
    registry.register(monitor)
    return ProbeServer("127.0.0.1", 0, registry, ready=monitor.ready_checks())


def burn_positions(url: str, count: int) -> None:
    """Draw ``count`` positions and use none (the gap an insert that lost a race leaves)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT nextval(pg_get_serial_sequence('todos_events', 'notification_id')) "
            "FROM generate_series(1, %s)",
            (count,),
        )


class Worker:
    """One projection run in this process, stopped and started at will."""

    def __init__(self, read_side: ReadSide, kind: str) -> None:
        self.read_side = read_side
        self.kind = kind
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=run_projection, args=(self.read_side, self.kind, self.stop_event), daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            assert not self.thread.is_alive(), "the projection did not stop"


@contextmanager
def projection_running(read_side: ReadSide, kind: str) -> Iterator[Worker]:
    worker = Worker(read_side, kind)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def test_projection_lag_grows_while_stopped_in_seconds_too_and_drains_after_restart(
    settings: Settings, fresh_database_url: str
) -> None:
    s = settings.model_copy(update={"database_url": fresh_database_url, "probe_stall_seconds": 0.5})
    app = build_application(s, fresh_database_url)
    read_side = build_read_side(s, fresh_database_url)
    read_side.ensure()
    probes = projection_probes(s, read_side, ("todos",), lambda: {this_process()})
    try:
        with probes, projection_running(read_side, "todos") as worker:
            base = probes.url
            app.create_todo("alice", title="first")
            head = app.head_position()

            def caught_up() -> bool:
                return (
                    metric(base, "tododb_projection_position", projection="todos") == head
                    and metric(base, "tododb_projection_lag_events", projection="todos") == 0
                )

            wait_until(caught_up, what="the projection to catch up")
            assert metric(base, "tododb_projection_lag_seconds", projection="todos") == 0
            assert metric(base, "tododb_projection_active", projection="todos") == 1
            assert probe(base, "/readyz")[0] == 200

            worker.stop()
            for n in range(2):
                app.create_todo("alice", title=f"while stopped {n}")
            burn_positions(fresh_database_url, 5)  # as inserts that lost a race do
            app.create_todo("alice", title="while stopped 2")
            assert app.head_position() - head == 3 + 5
            behind = 3  # events, not positions

            def lag_seconds() -> float:
                return metric(base, "tododb_projection_lag_seconds", projection="todos") or 0.0

            wait_until(
                lambda: metric(base, "tododb_projection_lag_events", projection="todos") == behind,
                what="the lag in events",
            )
            first = lag_seconds()
            wait_until(lambda: lag_seconds() > first, what="the lag in seconds to grow")
            assert metric(base, "tododb_projection_active", projection="todos") == 0
            # Nobody runs it and it is behind: after the stall window, not ready.
            wait_until(lambda: probe(base, "/readyz")[0] == 503, what="readyz to fail")
            _, body = probe(base, "/readyz")
            assert body["checks"]["database"]["ok"] is True
            assert "stalled" in body["checks"]["projection:todos"]["detail"]
            assert probe(base, "/healthz")[0] == 200

            worker.start()
            wait_until(
                lambda: (
                    metric(base, "tododb_projection_lag_events", projection="todos") == 0
                    and lag_seconds() == 0
                ),
                what="the lag to drain",
            )
            assert metric(base, "tododb_projection_position", projection="todos") == (
                app.head_position()
            )
            wait_until(lambda: probe(base, "/readyz")[0] == 200, what="ready again")
    finally:
        app.close()


def test_worker_readyz_fails_while_the_database_is_down_and_healthz_does_not(
    settings: Settings,
) -> None:
    pg = DisposablePostgres(Path(tempfile.mkdtemp(prefix="tododb-probes-pg-")))
    try:
        s = settings.model_copy(update={"database_url": pg.url})
        read_side = build_read_side(s, pg.url)
        read_side.ensure()
        with (
            projection_probes(s, read_side, KINDS, lambda: {this_process()}) as probes,
            projection_running(read_side, "todos"),
        ):
            base = probes.url
            wait_until(lambda: probe(base, "/readyz")[0] == 200, what="ready")
            pg.stop()
            wait_until(lambda: probe(base, "/readyz")[0] == 503, what="not ready")
            _, body = probe(base, "/readyz")
            assert body["status"] == "unavailable"
            assert body["checks"]["database"]["ok"] is False
            status, alive = probe(base, "/healthz")
            assert (status, alive["status"]) == (200, "ok")
            assert scrape(base) is not None  # a scrape answers, without the database's figures
            pg.start()
            wait_until(lambda: probe(base, "/readyz")[0] == 200, timeout=30, what="ready again")
    finally:
        pg.start()  # left running for its own clean-up (at exit)


def test_projections_process_serves_probes_and_logs_json_lines(
    fresh_database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = process_env(
        fresh_database_url, tmp_path, log_format="json", log_level="INFO", probe_port=str(port)
    )
    log_path = tmp_path / "projections.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(todo_command("projections", "run"), env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return probe(base, "/readyz")[0] == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout=60, what="the projections process to be ready")
        assert probe(base, "/healthz")[0] == 200
        samples = scrape(base)
        for kind in KINDS:
            assert (("tododb_projection_lag_events", (("projection", kind),))) in samples
            assert (("tododb_projection_lag_seconds", (("projection", kind),))) in samples
        # Each child process takes its projection's lock; the status names it.
        wait_until(
            lambda: all(metric(base, "tododb_projection_active", projection=k) == 1 for k in KINDS),
            what="both projections active",
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    records = json_log_lines(log_path)
    for record in records:
        assert {"timestamp", "level", "logger", "message", "role"} <= set(record)
        assert record["role"] == "projections"
    assert any("now the active worker" in r["message"] for r in records)


@pytest.mark.asyncio(loop_scope="session")
async def test_relay_and_consumer_group_lag_grow_while_stopped_and_drain(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    fresh_database_url: str,
) -> None:
    s = kafka_settings(
        settings,
        kafka_broker,
        database_url=fresh_database_url,
        lag_refresh_seconds=0.2,
        probe_stall_seconds=60.0,
    )
    url = fresh_database_url
    app = build_application(s, url)
    read_side = build_read_side(s, url)
    read_side.ensure()
    group = unique("analytics")
    relay = build_relay(s, url)
    service = AnalyticsService(s, url, group_id=group)
    relay_registry, consumer_registry = CollectorRegistry(), CollectorRegistry()
    relay_monitor = RelayMonitor(s, url, relay)
    consumer_monitor = ConsumerMonitor(s, url, service.consumer)
    relay_registry.register(relay_monitor)
    consumer_registry.register(consumer_monitor)
    relay_probes = ProbeServer("127.0.0.1", 0, relay_registry, ready=relay_monitor.ready_checks())
    consumer_probes = ProbeServer(
        "127.0.0.1", 0, consumer_registry, ready=consumer_monitor.ready_checks()
    )
    try:
        with relay_probes, consumer_probes:
            r, c = relay_probes.url, consumer_probes.url
            for n in range(3):
                await asyncio.to_thread(app.create_todo, "alice", title=f"todo {n}")
            head = app.head_position()
            # The relay never ran: the whole log is its lag, and it ages.
            assert metric(r, "tododb_relay_lag_events") == head
            first = metric(r, "tododb_relay_lag_seconds") or 0.0
            assert first > 0
            await eventually(
                lambda: (metric(r, "tododb_relay_lag_seconds") or 0) > first,
                what="the relay's lag in seconds to grow",
            )
            async with running(relay.run):
                await eventually(
                    lambda: (
                        metric(r, "tododb_relay_lag_events") == 0
                        and metric(r, "tododb_relay_lag_seconds") == 0
                    ),
                    what="the relay to drain",
                )
                assert metric(r, "tododb_relay_active") == 1
                assert (await asyncio.to_thread(probe, r, "/readyz"))[0] == 200

                # The group has consumed nothing: every message is its lag, and it ages.
                consumer_monitor.watcher.start()
                try:
                    await eventually(
                        lambda: metric(c, "tododb_consumer_lag_events", group=group) == head,
                        what="the group's lag in messages",
                    )
                    first = metric(c, "tododb_consumer_lag_seconds", group=group) or 0.0
                    await eventually(
                        lambda: (
                            (metric(c, "tododb_consumer_lag_seconds", group=group) or 0) > first
                        ),
                        what="the group's lag in seconds to grow",
                    )
                    assert metric(c, "tododb_dlq_depth", group=group) == 0
                    async with running(service.run):
                        await eventually(
                            lambda: (
                                metric(c, "tododb_consumer_lag_events", group=group) == 0
                                and metric(c, "tododb_consumer_lag_seconds", group=group) == 0
                            ),
                            what="the group to drain",
                        )
                        assert (await asyncio.to_thread(probe, c, "/readyz"))[0] == 200
                        handled = (("group", group), ("outcome", "handled"))
                        assert scrape(c)[("tododb_consumer_messages_total", handled)] == head

                        figures = await asyncio.to_thread(
                            pipeline_status, s, read_side, api=this_api(), groups=[group]
                        )
                        (consumer,) = figures["consumers"]
                        assert (consumer["group"], consumer["lag"], consumer["error"]) == (
                            group,
                            0,
                            None,
                        )
                        assert consumer["position"] == consumer["end"] == head
                        assert figures["relay"]["state"] == "running"
                        assert figures["relay"]["active_process"] == this_process()
                finally:
                    consumer_monitor.watcher.stop()
    finally:
        relay.close()
        app.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_relay_that_makes_no_progress_is_not_ready_until_it_runs(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    fresh_database_url: str,
) -> None:
    """Events wait and no relay publishes them: after the stall window ``/readyz`` fails
    and says so; once this process's relay runs and catches up, it is ready again."""
    url = fresh_database_url
    s = kafka_settings(settings, kafka_broker, database_url=url, probe_stall_seconds=0.5)
    app = build_application(s, url)
    relay = build_relay(s, url)
    monitor = RelayMonitor(s, url, relay)
    probes = probes_of(monitor)
    try:
        with probes:
            r = probes.url
            for n in range(2):
                await asyncio.to_thread(app.create_todo, "alice", title=f"todo {n}")
            await eventually(
                lambda: probe(r, "/readyz")[0] == 503, what="readyz to fail while stalled"
            )
            _, body = await asyncio.to_thread(probe, r, "/readyz")
            assert body["checks"]["database"]["ok"] is True
            assert "no active worker" in body["checks"]["relay"]["detail"]
            assert "stalled" in body["checks"]["relay"]["detail"]
            assert (await asyncio.to_thread(probe, r, "/healthz"))[0] == 200
            async with running(relay.run):
                await eventually(
                    lambda: (
                        metric(r, "tododb_relay_lag_events") == 0 and probe(r, "/readyz")[0] == 200
                    ),
                    what="the relay to catch up and be ready",
                )
                _, body = await asyncio.to_thread(probe, r, "/readyz")
                assert body["checks"]["relay"]["detail"].startswith("active")
                assert body["checks"]["broker"] == {"ok": True, "detail": "answered"}
    finally:
        app.close()
        relay.tracking.datastore.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_the_active_relay_is_not_ready_while_its_broker_is_unreachable(
    settings: Settings, fresh_database_url: str
) -> None:
    """Caught up (an empty log) and holding the relay's lock, but its broker does not
    answer: ``/readyz`` fails on the broker check, with what failed; ``/healthz`` not."""
    url = fresh_database_url
    s = settings.model_copy(
        update={
            "database_url": url,
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",  # nothing listens
            "kafka_request_timeout_ms": 1000,
            "relay_backoff_max_seconds": 0.5,
        }
    )
    relay = build_relay(s, url)
    monitor = RelayMonitor(s, url, relay)
    probes = probes_of(monitor)
    try:
        with probes:
            r = probes.url
            _, body = await asyncio.to_thread(probe, r, "/readyz")
            assert body["checks"]["broker"] == {
                "ok": True,
                "detail": "not contacted (standing by)",
            }
            async with running(relay.run):

                def broker_failed() -> bool:
                    status, body = probe(r, "/readyz")
                    return status == 503 and not body["checks"]["broker"]["ok"]

                await eventually(broker_failed, what="the broker check to fail")
                _, body = await asyncio.to_thread(probe, r, "/readyz")
                assert "starting the producer failed" in body["checks"]["broker"]["detail"]
                assert body["checks"]["database"]["ok"] is True
                assert body["checks"]["relay"]["ok"] is True  # nothing to publish
                assert (await asyncio.to_thread(probe, r, "/healthz"))[0] == 200
    finally:
        relay.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_consumer_is_not_ready_while_its_broker_is_unreachable(
    settings: Settings, fresh_database_url: str
) -> None:
    """Its database is there, its broker is not: ``/readyz`` says which, with the error
    of the last reading of the group's offsets; ``/healthz`` (alive) does not fail."""
    s = settings.model_copy(
        update={
            "database_url": fresh_database_url,
            "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}",  # nothing listens
            "lag_refresh_seconds": 0.2,
        }
    )
    service = AnalyticsService(s, fresh_database_url, group_id=unique("analytics"))
    monitor = ConsumerMonitor(s, fresh_database_url, service.consumer)
    probes = probes_of(monitor)
    monitor.watcher.start()
    try:
        with probes:

            def broker_failed() -> bool:
                status, body = probe(probes.url, "/readyz")
                broker = body["checks"]["broker"]
                return status == 503 and not broker["ok"] and "no recent" not in broker["detail"]

            await eventually(broker_failed, within=60, what="a failed reading of the broker")
            _, body = await asyncio.to_thread(probe, probes.url, "/readyz")
            assert body["checks"]["database"]["ok"] is True
            assert body["checks"]["group"]["ok"] is False  # its lag is unknown
            assert (await asyncio.to_thread(probe, probes.url, "/healthz"))[0] == 200
    finally:
        await asyncio.to_thread(monitor.watcher.stop)


def test_admin_status_shows_every_part_of_the_pipeline(
    client: TestClient, auth: Callable[..., dict[str, str]], user: str
) -> None:
    client.post("/v1/todos", json={"title": "status"}, headers=auth(user))
    answer = client.get("/v1/admin/status", headers=auth("root", admin=True))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["api"]["state"] == "ready"
    assert body["head"] >= 1
    assert {p["name"] for p in body["projections"]} == set(KINDS)
    for p in body["projections"]:
        assert {"position", "lag", "lag_seconds", "state", "active_process"} <= set(p)
        assert p["state"] == "running"  # the session's projection worker holds them
        assert p["active_process"] == this_process()
    assert {"position", "lag", "lag_seconds", "state", "active_process"} <= set(body["relay"])
    assert [c["group"] for c in body["consumers"]] == ["notifications", "analytics"]

    forbidden = client.get("/v1/admin/status", headers=auth(user))
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/admin/status").status_code == 401


def test_todo_status_prints_the_pipeline(database_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TODO_JWT_SECRET": TEST_SECRET,
        "TODO_DATA_DIR": str(tmp_path),
        "KAFKA_BOOTSTRAP_SERVERS": "",
        "COLUMNS": "200",
    }
    port = free_port()  # nothing listens: the API shows as unreachable
    as_json = subprocess.run(
        [*todo_command("status", "--json", "--api-url", f"http://127.0.0.1:{port}")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    figures = json.loads(as_json.stdout)
    assert figures["api"]["state"] == "unreachable"
    assert {p["name"] for p in figures["projections"]} == set(KINDS)
    assert figures["relay"]["state"] in ("running", "stopped")
    assert [c["group"] for c in figures["consumers"]] == ["notifications", "analytics"]
    assert all(c["state"] == "unknown" and c["error"] for c in figures["consumers"])

    table = subprocess.run(
        [*todo_command("status", "--api-url", f"http://127.0.0.1:{port}")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for part in ("api", "projection", "relay", "consumer", *KINDS, "notifications", "analytics"):
        assert part in table, table
