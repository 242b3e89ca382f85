"""The relay under failure: killed at random points, the broker restarted mid-stream.

Each test has a database of its own (the relay's position and lock are per database)
and a topic of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

import psycopg
import pytest

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.downstream import eventually, kafka_settings, read_topic, running, unique
from tododb.application import TodoApplication
from tododb.consumers.runner import AnalyticsService
from tododb.devservers.tansu import BrokerHandle, TansuBroker
from tododb.domain import event_id, public_type
from tododb.entrypoints.bootstrap import build_relay
from tododb.infra.settings import Settings
from tododb.relay.status import relay_status

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


class Writer:
    """Commands on a thread, so the log keeps growing while the test breaks things."""

    def __init__(self, app: TodoApplication, users: int = 4) -> None:
        self.app = app
        self.users = [unique("user") for _ in range(users)]
        self.stop = threading.Event()
        self.commands = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(4)
        try:
            while not self.stop.is_set():
                owner = rng.choice(self.users)
                todo = self.app.create_todo(owner, title=f"todo {self.commands}").todo
                self.app.complete_todo(owner, todo.id)
                if rng.random() < 0.3:
                    self.app.reopen_todo(owner, todo.id)
                if rng.random() < 0.2:
                    self.app.delete_todo(owner, todo.id)
                self.commands += 1
                self.stop.wait(0.005)  # a steady stream, not a flood
        except BaseException as e:
            self.error = e

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert self.error is None, self.error


def store_events(app: TodoApplication) -> list[Any]:
    notifications = app.recorder.select_notifications(start=1, limit=1_000_000)
    return [app.mapper.to_domain_event(n) for n in notifications]


def expected_totals(app: TodoApplication) -> dict[tuple[str, str], int]:
    """(owner, public type) → count, straight from the event store."""
    owners: dict[Any, str] = {}
    totals: Counter[tuple[str, str]] = Counter()
    for event in store_events(app):
        if hasattr(event, "owner"):
            owners[event.originator_id] = event.owner
        totals[(owners[event.originator_id], public_type(event))] += 1
    return dict(totals)


def analytics_totals(database_url: str, owners: list[str]) -> dict[tuple[str, str], int]:
    columns = {
        "created": "todos.task.created",
        "completed": "todos.task.completed",
        "reopened": "todos.task.reopened",
        "deleted": "todos.task.deleted",
    }
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('analytics.daily')").fetchone()
        if exists is None or exists[0] is None:
            return {}
        rows = conn.execute(
            "SELECT owner, sum(created), sum(completed), sum(reopened), sum(deleted) "
            "FROM analytics.daily WHERE owner = ANY(%s) GROUP BY owner",
            (owners,),
        ).fetchall()
    totals: dict[tuple[str, str], int] = {}
    for owner, *sums in rows:
        for column, value in zip(columns.values(), sums, strict=True):
            if value:
                totals[(owner, column)] = int(value)
    return totals


def counted(totals: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    kinds = {
        "todos.task.created",
        "todos.task.completed",
        "todos.task.reopened",
        "todos.task.deleted",
    }
    return {k: v for k, v in totals.items() if k[1] in kinds}


def relay_process(s: Settings, database_url: str, log_path: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": str(s.kafka_bootstrap_servers),
        "TODO_KAFKA_TOPIC": s.kafka_topic,
        "TODO_KAFKA_IDEMPOTENCE": "false",
        "TODO_KAFKA_TOPIC_PARTITIONS": str(s.kafka_topic_partitions),
        "TODO_RELAY_BATCH_SIZE": "50",
        "TODO_JWT_SECRET": "unused-" + "x" * 32,
    }
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tododb.entrypoints.cli", "relay", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def tail(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-3000:]


def tracked_position(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('public.relay_tracking')").fetchone()
        if exists is None or exists[0] is None:
            return 0
        row = conn.execute(
            "SELECT max(notification_id) FROM relay_tracking WHERE application_name = 'todos'"
        ).fetchone()
    return int(row[0] or 0) if row else 0


async def test_relay_killed_at_random_points_loses_nothing(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    fresh_database_url: str,
    fresh_app: TodoApplication,
    tmp_path: Any,
) -> None:
    s = kafka_settings(settings, kafka_broker)
    rng = random.Random()
    log_path = str(tmp_path / "relay.log")
    kills = 0
    with Writer(fresh_app) as writer:
        proc = relay_process(s, fresh_database_url, log_path)
        try:
            for _ in range(6):
                # Wait until it made progress, then kill it at a random moment after that.
                before = tracked_position(fresh_database_url)
                await eventually(
                    lambda before=before: tracked_position(fresh_database_url) > before,
                    what="the relay to advance",
                )
                await asyncio.sleep(rng.uniform(0.0, 0.4))  # a random kill point, not a wait
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = relay_process(s, fresh_database_url, log_path)
        except BaseException:
            proc.kill()
            raise
    try:
        head = fresh_app.head_position()
        await eventually(
            lambda: tracked_position(fresh_database_url) >= head,
            within=60,
            what=f"relay position {head}",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, tail(log_path)

    assert kills == 6
    assert writer.commands > 0
    events = store_events(fresh_app)
    assert len(events) == head
    records = await read_topic(str(s.kafka_bootstrap_servers), s.kafka_topic)
    on_topic = Counter(json.loads(r.value)["id"] for r in records)
    expected = {str(event_id(e.originator_id, e.originator_version)) for e in events}
    assert expected <= set(on_topic), f"{len(expected - set(on_topic))} events never published"
    assert set(on_topic) <= expected
    # Per todo, the first copy of each event arrives in version order (one key, one partition).
    firsts: dict[str, list[int]] = {}
    seen: set[str] = set()
    for r in records:
        envelope = json.loads(r.value)
        if envelope["id"] not in seen:
            seen.add(envelope["id"])
            firsts.setdefault(envelope["subject"], []).append(envelope["aggregateversion"])
    assert all(v == sorted(v) for v in firsts.values())

    # Analytics over the at-least-once stream: exact totals despite the duplicates.
    analytics = AnalyticsService(s, fresh_database_url, group_id=unique("analytics"))
    want = counted(expected_totals(fresh_app))
    async with running(analytics.run):
        await eventually(
            lambda: analytics_totals(fresh_database_url, writer.users) == want,
            what="exact analytics totals",
        )
    duplicates = sum(on_topic.values()) - len(on_topic)
    print(f"{kills} kills, {len(events)} events, {duplicates} re-sent duplicates on the topic")
    assert analytics.consumer.counters.duplicates == duplicates


async def test_broker_restart_mid_stream_loses_nothing(
    settings: Settings, fresh_database_url: str, fresh_app: TodoApplication
) -> None:
    """The relay keeps running while the broker is killed and restarted: it backs off,
    catches up, and every event committed during the outage and after it is published.

    A broker of its own (restarting the shared one would wipe other tests' topics).
    Tansu's memory store forgets every record *and every committed offset* on a restart,
    and the recreated topic counts offsets from 0 again; a consumer that lived through
    that could apply offsets of the old incarnation to the new log (an artefact of a
    broker that loses its log, impossible with a durable Kafka). So the consumer is
    stopped once it has everything from before the outage and restarted afterwards,
    and the analytics totals must still equal the event store exactly.
    """
    broker = TansuBroker()
    await asyncio.to_thread(broker.start)
    try:
        # Decoding in the relay's own process (no decoder processes): that path too.
        s = kafka_settings(settings, broker, relay_decode_processes=0)
        relay = build_relay(s, fresh_database_url)
        group = unique("analytics")
        users = [unique("user") for _ in range(3)]

        def write(n: int) -> None:
            for i in range(n):
                owner = users[i % len(users)]
                todo = fresh_app.create_todo(owner, title=f"todo {i}").todo
                fresh_app.complete_todo(owner, todo.id)
                if i % 3 == 0:
                    fresh_app.delete_todo(owner, todo.id)

        async with running(relay.run):
            async with running(AnalyticsService(s, fresh_database_url, group_id=group).run):
                await asyncio.to_thread(write, 20)
                want = counted(expected_totals(fresh_app))
                await eventually(
                    lambda: analytics_totals(fresh_database_url, users) == want,
                    what="analytics before the outage",
                )
            before_outage = fresh_app.head_position()
            await eventually(lambda: relay.position() == before_outage, what="relay recorded")

            await asyncio.to_thread(broker.stop, kill=True)
            await asyncio.to_thread(write, 20)  # committed while the broker is down
            await eventually(lambda: relay.failures > 0, what="the relay to notice")
            assert relay.position() == before_outage

            await asyncio.to_thread(broker.start)
            await asyncio.to_thread(write, 10)
            head = fresh_app.head_position()
            await eventually(lambda: relay.position() == head, within=60, what="relay catch-up")
            # The restarted broker forgot what it had acknowledged; the relay noticed
            # before re-sending (republishing is off by default: it only says so).
            assert relay.data_loss_detected == 1
            records = await read_topic(broker.bootstrap_servers, s.kafka_topic)
            published = {json.loads(r.value)["sequence"] for r in records}
            assert {str(p) for p in range(before_outage + 1, head + 1)} <= published

            want = counted(expected_totals(fresh_app))
            async with running(AnalyticsService(s, fresh_database_url, group_id=group).run):
                await eventually(
                    lambda: analytics_totals(fresh_database_url, users) == want,
                    what="analytics after the restart",
                )
        relay.close()
    finally:
        await asyncio.to_thread(broker.stop, kill=True)


async def test_replay_republishes_from_a_position_and_status_reports_lag(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    fresh_database_url: str,
    fresh_app: TodoApplication,
) -> None:
    s = kafka_settings(settings, kafka_broker)
    owner = unique("dave")
    for i in range(5):
        fresh_app.create_todo(owner, title=f"todo {i}")
    head = fresh_app.head_position()  # 5 todos, and the owner's Inbox made with the first
    assert head in (5, 6)
    relay = build_relay(s, fresh_database_url, fresh_app)
    try:
        status = relay_status(fresh_database_url, s.db_schema)
        lag_seconds = status.pop("lag_seconds")
        assert status == {
            "position": 0,
            "head": head,
            "lag": head,
            "active": False,
            "active_process": None,
            "quarantined": 0,
            "held": 0,
        }
        assert lag_seconds >= 0  # the age of the first unpublished event
        assert await relay.replay(head - 2) == 3
        records = await read_topic(str(s.kafka_bootstrap_servers), s.kafka_topic)
        assert sorted(int(json.loads(r.value)["sequence"]) for r in records) == [
            head - 2,
            head - 1,
            head,
        ]
        # Replay leaves the relay's own position alone.
        assert relay.status().position == 0
    finally:
        relay.tracking.datastore.close()
