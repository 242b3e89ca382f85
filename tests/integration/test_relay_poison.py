"""The relay never halts on one bad event, and notices a broker that lost data.

Real PostgreSQL, real Tansu. Poison reaches the log as the library never writes it: raw
inserts into ``todos_events`` (a topic that no longer resolves, bytes that are not JSON,
a title with a NUL, a todo whose created event is unreadable).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.utils import clear_topic_cache, register_topic

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.downstream import eventually, kafka_settings, read_topic, running, unique
from tododb.api.admin_relay import RelayStatusOut
from tododb.application import TodoApplication
from tododb.devservers.tansu import BrokerHandle, TansuBroker
from tododb.domain import Todo, event_id, inbox_id
from tododb.entrypoints.bootstrap import build_relay
from tododb.entrypoints.supervisor import todo_command
from tododb.infra.settings import Settings
from tododb.relay.service import NothingQuarantined
from tododb.relay.status import relay_status

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

GONE_TOPIC = "tododb.domain.todo:Todo.Renamed"
"""A topic no class answers to (an event type renamed away), until a test registers it."""


def insert_raw(database_url: str, todo_id: UUID, version: int, topic: str, state: bytes) -> int:
    """A stored event as no application would write it; its log position."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO todos_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s) RETURNING notification_id",
            (todo_id, version, topic, state),
        ).fetchone()
        conn.execute("NOTIFY todos_events")  # what the library's recorder does on insert
    assert row is not None
    return int(row[0])


def stored(app: TodoApplication, todo_id: UUID, change: Callable[[Any], object]) -> list[Any]:
    """The stored events ``change`` would append to the todo (not saved)."""
    todo: Any = app.repository.get(todo_id)
    change(todo)
    return [app.mapper.to_stored_event(e) for e in todo.collect_events()]


def with_title(state: bytes, title: str) -> bytes:
    fields = json.loads(state)
    fields["title"] = title
    return json.dumps(fields).encode()


def versions_on_topic(records: list[Any]) -> dict[str, list[int]]:
    """Todo id → versions of its first copies, in topic order (one key, one partition)."""
    seen: set[str] = set()
    versions: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        envelope = json.loads(r.value)
        if envelope["id"] not in seen:
            seen.add(envelope["id"])
            versions.setdefault(envelope["subject"], []).append(envelope["aggregateversion"])
    return versions


def cli(s: Settings, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": str(s.kafka_bootstrap_servers),
        "TODO_KAFKA_TOPIC": s.kafka_topic,
        "TODO_KAFKA_IDEMPOTENCE": "false",
        "TODO_JWT_SECRET": "unused-" + "x" * 32,
    }
    return subprocess.run(
        todo_command("relay", *args), env=env, capture_output=True, text=True, timeout=120
    )


class PoisonedLog:
    """Good todos B and C; poisoned ones: A (a topic gone), D (not JSON), E (a NUL in a
    title), F (its created event unreadable, so its next one has no owner either)."""

    def __init__(self, app: TodoApplication, url: str) -> None:
        self.app, self.url = app, url
        self.owner = unique("poison")
        self.a: UUID = self.create("todo a")
        self.b: UUID = self.create("todo b")
        self.d: UUID = self.create("todo d")
        self.e: UUID = self.create("todo e")
        self.f: UUID = uuid4()
        self.c: UUID | None = None

    def create(self, title: str) -> UUID:
        return self.app.create_todo(self.owner, title=title).todo.id

    def write(self) -> None:
        renamed, completed = stored(self.app, self.a, lambda t: (t.change_title("x"), t.complete()))
        insert_raw(self.url, self.a, 2, GONE_TOPIC, renamed.state)
        self.app.complete_todo(self.owner, self.b)  # another todo's event in between
        insert_raw(self.url, self.a, 3, completed.topic, completed.state)
        d_done = stored(self.app, self.d, lambda t: t.complete())[0]
        insert_raw(self.url, self.d, 2, d_done.topic, b"{not json")
        insert_raw(self.url, self.d, 3, d_done.topic, d_done.state)
        titled = stored(self.app, self.e, lambda t: t.change_title("fine"))[0]
        insert_raw(self.url, self.e, 2, titled.topic, with_title(titled.state, "nul\x00here"))
        insert_raw(self.url, self.f, 1, GONE_TOPIC, b"{}")
        insert_raw(self.url, self.f, 2, d_done.topic, d_done.state)
        self.c = self.create("after the poison")
        self.app.complete_todo(self.owner, self.c)


async def test_poison_is_quarantined_its_todo_held_and_everyone_else_published(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    fresh_database_url: str,
    fresh_app: TodoApplication,
) -> None:
    url = fresh_database_url
    s = kafka_settings(settings, kafka_broker)  # decoder processes: the default
    log = PoisonedLog(fresh_app, url)
    log.write()
    head = fresh_app.head_position()

    relay = build_relay(s, url, fresh_app)
    async with running(relay.run):
        await eventually(lambda: relay.position() == head, what=f"relay position {head}")
    relay.tracking.datastore.close()

    on_topic = versions_on_topic(await read_topic(str(s.kafka_bootstrap_servers), s.kafka_topic))
    a, b, c, d, e, f = map(str, (log.a, log.b, log.c, log.d, log.e, log.f))
    assert on_topic.pop(str(inbox_id(log.owner))) == [1]  # the Inbox, made on first use
    assert on_topic == {a: [1], b: [1, 2], c: [1, 2], d: [1], e: [1]}
    status = relay_status(url, s.db_schema)
    assert (status["lag"], status["quarantined"], status["held"]) == (0, 4, 3)
    RelayStatusOut(**status, topic=s.kafka_topic)  # what GET /v1/admin/relay answers

    listed = cli(s, url, "quarantine")
    assert listed.returncode == 0, listed.stderr
    rows = {(r["todo_id"], r["version"]): r for r in json.loads(listed.stdout)}
    assert {k: r["status"] for k, r in rows.items()} == {
        (a, 2): "quarantined",
        (a, 3): "held",
        (d, 2): "quarantined",
        (d, 3): "held",
        (e, 2): "quarantined",
        (f, 1): "quarantined",
        (f, 2): "held",
    }
    assert "TopicError" in rows[(a, 2)]["error"]
    assert rows[(a, 2)]["topic"] == GONE_TOPIC
    assert "NUL" in rows[(e, 2)]["error"]
    assert "owner" in rows[(f, 2)]["error"]  # held, and failing on its own too

    # No relay running: `todo relay skip` takes the relay's lock and publishes itself.
    skipped = cli(s, url, "skip", d)
    assert skipped.returncode == 0, skipped.stderr
    outcome = json.loads(skipped.stdout)
    assert outcome["applied"] is True
    assert [(r["version"], r["status"]) for r in outcome["events"]] == [
        (2, "skipped"),
        (3, "released"),
    ]
    on_topic = versions_on_topic(await read_topic(str(s.kafka_bootstrap_servers), s.kafka_topic))
    assert on_topic[d] == [1, 3]
    assert cli(s, url, "retry", b).returncode == 1  # nothing quarantined there


async def test_retry_after_a_fix_publishes_in_order_through_the_running_relay(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    fresh_database_url: str,
    fresh_app: TodoApplication,
) -> None:
    url = fresh_database_url
    # Decoding in the relay's process: the "fix" (a topic registered here) must reach it.
    s = kafka_settings(settings, kafka_broker, relay_decode_processes=0)
    log = PoisonedLog(fresh_app, url)
    log.write()
    a, e = str(log.a), str(log.e)
    relay, asker = build_relay(s, url, fresh_app), build_relay(s, url)
    try:
        async with running(relay.run):
            await eventually(lambda: relay.position() == fresh_app.head_position(), what="head")
            reopened = stored(fresh_app, log.b, lambda t: t.reopen())[0]
            insert_raw(url, log.a, 4, reopened.topic, reopened.state)  # held on arrival
            await eventually(lambda: relay.position() == fresh_app.head_position(), what="v4")
            assert relay.quarantine.held.get(a.encode()) is not None

            register_topic(GONE_TOPIC, Todo.TitleChanged)  # type: ignore[attr-defined]
            outcome = await asker.request(log.a, "retry", wait=30)
            assert outcome["applied"] is True
            assert [r["status"] for r in outcome["events"]] == ["released"] * 3
            fresh_app.delete_todo(log.owner, log.a)  # no longer held: straight out
            await eventually(lambda: relay.position() == fresh_app.head_position(), what="v5")

            still = await asker.request(log.e, "retry", wait=30)  # still poison
            assert [(r["version"], r["status"]) for r in still["events"]] == [(2, "quarantined")]
            with pytest.raises(NothingQuarantined):
                await asker.request(log.b, "skip")
    finally:
        clear_topic_cache()  # the registration is this test's alone
        relay.tracking.datastore.close()
        asker.close()

    records = await read_topic(str(s.kafka_bootstrap_servers), s.kafka_topic)
    on_topic = versions_on_topic(records)
    assert on_topic[a] == [1, 2, 3, 4, 5]
    assert on_topic[e] == [1]
    renamed = [json.loads(r.value) for r in records if r.key == a.encode()][1]
    assert renamed["type"] == "todos.task.title_changed"
    assert renamed["id"] == str(event_id(log.a, 2))
    status = relay_status(url, s.db_schema)
    assert (status["quarantined"], status["held"]) == (3, 2)  # D, E, F; D v3 and F v2
    assert relay.store.requests() == []


async def write(app: TodoApplication, owner: str, todos: int) -> None:
    def run() -> None:
        for i in range(todos):
            todo = app.create_todo(owner, title=f"todo {i}").todo
            app.complete_todo(owner, todo.id)

    await asyncio.to_thread(run)


async def published_ids(s: Settings) -> set[str]:
    return {
        json.loads(r.value)["id"]
        for r in await read_topic(str(s.kafka_bootstrap_servers), s.kafka_topic)
    }


async def until_published(s: Settings, want: set[str], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while (got := await published_ids(s)) != want:
        missing, unexpected = len(want - got), len(got - want)
        assert time.monotonic() < deadline, f"{what}: {missing} missing, {unexpected} unexpected"
        await asyncio.sleep(0.5)


def store_ids(app: TodoApplication) -> set[str]:
    notifications = app.recorder.select_notifications(start=1, limit=1_000_000)
    return {str(event_id(UUID(str(n.originator_id)), n.originator_version)) for n in notifications}


async def test_a_broker_that_lost_acknowledged_records_is_noticed_and_given_the_log_again(
    settings: Settings,
    fresh_database_url: str,
    fresh_app: TodoApplication,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker of its own: its memory store forgets every record on a restart."""
    broker = TansuBroker()
    await asyncio.to_thread(broker.start)
    try:
        base = kafka_settings(settings, broker, relay_decode_processes=0)
        fast = {"relay_loss_check_seconds": 1.0}
        off = base.model_copy(update={**fast, "relay_republish_on_loss": False})
        on = base.model_copy(update={**fast, "relay_republish_on_loss": True})
        owner = unique("loss")
        await write(fresh_app, owner, 15)
        head = fresh_app.head_position()

        # Republish off: it says so (log, counter), and carries on.
        relay = build_relay(off, fresh_database_url, fresh_app)
        async with running(relay.run):
            await eventually(lambda: relay.position() == head, what="published")
            assert await published_ids(off) == store_ids(fresh_app)
            await asyncio.to_thread(broker.restart, kill=True)
            await eventually(lambda: relay.data_loss_detected >= 1, within=20, what="the loss")
        relay.tracking.datastore.close()
        assert await published_ids(off) == set()
        losses = [r for r in caplog.records if r.levelno == logging.ERROR and "LOSS" in r.message]
        assert losses
        assert "partition" in losses[0].message

        # Republish on: a relay starting over the empty topic gives it the log again,
        # and so does one running while the broker loses everything once more.
        relay = build_relay(on, fresh_database_url, fresh_app)
        async with running(relay.run):
            await eventually(lambda: relay.data_loss_detected == 1, within=20, what="at start")
            await until_published(on, store_ids(fresh_app), "all of the log")
            await asyncio.to_thread(broker.restart, kill=True)
            await eventually(lambda: relay.data_loss_detected == 2, within=20, what="2nd loss")
            await write(fresh_app, owner, 5)
            await until_published(on, store_ids(fresh_app), "the log and what came after")
            await eventually(lambda: relay.position() == fresh_app.head_position(), what="pos")
            await asyncio.sleep(2.5)  # two more checks: the log given again is no loss
            assert relay.data_loss_detected == 2
        relay.tracking.datastore.close()

        # Lost while events wait to be sent: noticed before the re-send (no periodic
        # check here), so nothing newer reaches the new log ahead of the old.
        slow = on.model_copy(update={"relay_loss_check_seconds": 600.0})
        relay = build_relay(slow, fresh_database_url, fresh_app)
        async with running(relay.run):
            await write(fresh_app, owner, 1)  # once published, the relay is surely up
            await eventually(lambda: relay.position() == fresh_app.head_position(), what="up")
            await asyncio.to_thread(broker.stop, kill=True)
            await write(fresh_app, owner, 5)
            await eventually(lambda: relay.failures > 0, what="a failed send")
            await asyncio.to_thread(broker.start)
            await until_published(slow, store_ids(fresh_app), "the log, then the new events")
            await eventually(lambda: relay.position() == fresh_app.head_position(), what="pos")
            assert relay.data_loss_detected == 1
        relay.tracking.datastore.close()
        records = await read_topic(broker.bootstrap_servers, slow.kafka_topic)
        assert all(v == sorted(v) for v in versions_on_topic(records).values())
    finally:
        await asyncio.to_thread(broker.stop, kill=True)
