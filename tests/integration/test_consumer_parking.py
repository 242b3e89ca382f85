"""Consumers park a failing todo's later events behind its failure, in order, and let an
operator retry or skip; and a consumer group survives a broker restart (never wedges).

Real servers only: PostgreSQL and Tansu. The handler here is a small recording handler
with switches (fail for some todos, hold at a gate) so the failures are deterministic.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.downstream import eventually, kafka_settings, read_topic, running, unique
from tododb.consumers.core import AsyncConn, ConsumerService, dlq_topic
from tododb.consumers.ddl import inbox_ddl
from tododb.consumers.group import GroupBroken, GroupMember
from tododb.consumers.runner import AnalyticsService, NotificationsService
from tododb.contract import TodoEvent
from tododb.devservers.tansu import BrokerHandle, TansuBroker
from tododb.domain import Todo
from tododb.entrypoints.supervisor import todo_command
from tododb.infra.kafka import CachingPartitioner, create_topic
from tododb.infra.settings import Settings
from tododb.relay.envelope import OutgoingMessage, to_message

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


class RecordingHandler:
    """Records every handled event (in its own schema, in the inbox transaction).

    ``failing``: todo ids whose events raise; ``held``: todo ids whose events wait for
    ``gate`` (``reached`` is set when one arrives there).
    """

    def __init__(self) -> None:
        self.name = f"parking_{uuid.uuid4().hex[:10]}"
        self.failing: set[str] = set()
        self.held: set[str] = set()
        self.gate = asyncio.Event()
        self.reached = asyncio.Event()

    def ddl(self) -> Sequence[str]:
        return (
            f"CREATE SCHEMA IF NOT EXISTS {self.name}",
            inbox_ddl(self.name),
            f"CREATE TABLE IF NOT EXISTS {self.name}.seen (n bigserial PRIMARY KEY, "
            "todo_id uuid NOT NULL, version integer NOT NULL, type text NOT NULL)",
        )

    async def handle(self, conn: AsyncConn, event: TodoEvent) -> None:
        if event.todo_id in self.failing:
            raise RuntimeError(f"cannot handle todo {event.todo_id}")
        if event.todo_id in self.held:
            self.reached.set()
            await self.gate.wait()
        await conn.execute(
            f"INSERT INTO {self.name}.seen (todo_id, version, type) VALUES (%s, %s, %s)",
            (event.todo_id, event.version, event.type),
        )


def seen(database_url: str, schema: str) -> list[tuple[str, int]]:
    """(todo id, version) of every handled event, in the order handled."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(f"SELECT todo_id, version FROM {schema}.seen ORDER BY n").fetchall()
    return [(str(todo_id), version) for todo_id, version in rows]


def lived(owner: str, title: str) -> Todo:
    """A todo with four events to collect: created, title changed, completed, reopened."""
    todo = Todo.create(owner=owner, title=title)
    todo.change_title(f"{title} (edited)")
    todo.complete()
    todo.reopen()
    return todo


def life(owner: str, title: str) -> tuple[str, list[Any]]:
    """A todo's id and its four events."""
    todo = lived(owner, title)
    return str(todo.id), list(todo.collect_events())


def life_on_partition(owner: str, title: str, partition: int, *, of: int) -> tuple[str, list[Any]]:
    """A todo whose key the default partitioner puts on ``partition`` of ``of``."""
    while True:
        todo_id, events = life(owner, title)
        if CachingPartitioner().index(todo_id.encode(), of) == partition:
            return todo_id, events


class Publisher:
    """Publishes domain events as the relay would, with increasing log positions."""

    def __init__(self, bootstrap: str, topic: str, owner: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.owner = owner
        self.position = 0

    def message(self, event: Any) -> OutgoingMessage:
        self.position += 1
        return to_message(event, self.position, self.owner)

    async def send(self, events: Sequence[Any]) -> None:
        """In one produce batch per partition, so a consumer fetches them together."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False, linger_ms=50
        )
        await producer.start()
        try:
            messages = [self.message(event) for event in events]
            sent = [
                await producer.send(self.topic, m.value, key=m.key, headers=m.headers)
                for m in messages
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()


def versions(database_url: str, schema: str, todo_id: str) -> list[int]:
    return [version for t, version in seen(database_url, schema) if t == todo_id]


def interleave(*lives: list[Any]) -> list[Any]:
    """Events of several todos, alternating (each todo's own order kept)."""
    return [e for group in zip(*lives, strict=True) for e in group]


async def test_a_failing_todo_is_parked_in_order_and_retried(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
) -> None:
    # One partition: every todo's messages share the fetched batches, so the batch path
    # (handling the free todos in one transaction, parking the parked one's) is taken.
    s = kafka_settings(settings, kafka_broker, consumer_max_attempts=2, kafka_topic_partitions=1)
    owner = unique("parking")
    bad_todo = lived(owner, "bad")
    bad, bad_events = str(bad_todo.id), list(bad_todo.collect_events())
    (one, one_events), (two, two_events) = life(owner, "one"), life(owner, "two")
    handler = RecordingHandler()
    handler.failing.add(bad)
    publisher = Publisher(kafka_broker.bootstrap_servers, s.kafka_topic, owner)
    await create_topic(kafka_broker.bootstrap_servers, s.kafka_topic, 1)
    service = ConsumerService(s, database_url, handler, group_id=unique("parking"))
    await service.open()  # the parked table and the pool, before the checks below
    async with running(service.run):
        await publisher.send(interleave(one_events[:2], bad_events[:2], two_events[:2]))
        await eventually(lambda: parked_are(service, {bad: 2}), what="bad parked")
        await publisher.send(interleave(one_events[2:], bad_events[2:], two_events[2:]))
        await eventually(lambda: parked_are(service, {bad: 4}), what="the rest parked")
        await eventually(
            lambda: versions(database_url, handler.name, two) == [1, 2, 3, 4], what="others"
        )
        assert versions(database_url, handler.name, one) == [1, 2, 3, 4]
        assert versions(database_url, handler.name, bad) == []
        assert service.parked_count() == 1
        assert (service.counters.dead_lettered, service.counters.parked) == (1, 4)

        # Parked in order, the head with its error; the DLQ has the first failure only.
        messages = await service.parking.messages(bad)
        assert [json.loads(m.value or b"")["aggregateversion"] for m in messages] == [1, 2, 3, 4]
        assert [m.offset for m in messages] == sorted(m.offset for m in messages)
        assert "cannot handle" in (messages[0].error or "")
        assert [m.attempts for m in messages] == [2, 0, 0, 0]
        dlq = dlq_topic(s.kafka_topic, service.group_id)
        dead = [json.loads(r.value) for r in await read_topic(kafka_broker.bootstrap_servers, dlq)]
        assert [(d["subject"], d["aggregateversion"]) for d in dead] == [(bad, 1)]
        (summary,) = await service.parking.summary()
        assert (summary.key, summary.count, summary.head_attempts) == (bad, 4, 2)

        # Retried while the handler still fails: parked where it was, with the new error.
        release = await service.retry_parked(bad)
        assert (release.handled, release.released, release.remaining) == (0, False, 4)
        assert "cannot handle" in (release.error or "")
        assert (await service.parking.messages(bad))[0].attempts == 3

        # Fixed: every parked event is handled in order, the key released.
        handler.failing.clear()
        release = await service.retry_parked(bad)
        assert (release.handled, release.released, release.remaining) == (4, True, 0)
        assert versions(database_url, handler.name, bad) == [1, 2, 3, 4]
        assert service.parked_count() == 0
        assert await service.parking.summary() == []
        assert {m.status for m in await service.parking.messages(bad)} == {"handled"}

        # Released: its next event is handled at once, not parked.
        bad_todo.delete()
        await publisher.send(list(bad_todo.collect_events()))
        await eventually(lambda: len(versions(database_url, handler.name, bad)) == 5)
    assert service.counters.parked == 4
    await service.close()


async def parked_are(service: ConsumerService, want: dict[str, int]) -> bool:
    """The group's parked keys with how many messages wait behind each, are ``want``."""
    return {k.key: k.count for k in await service.parking.summary()} == want


def todo_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        todo_command("consumer", *args), env=env, capture_output=True, text=True, timeout=60
    )


async def test_skip_gives_up_the_head_and_handles_the_rest_in_order(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
) -> None:
    """Through the CLI, on the notifications consumer: its created event cannot be
    handled (no title); skipping it lets the later events through, in order."""
    s = kafka_settings(settings, kafka_broker, consumer_max_attempts=1)
    owner = unique("skip")
    editor = unique("editor")  # acts, so the owner is notified
    todo = Todo.create(owner=owner, title="doomed", actor=editor)
    todo.complete(actor=editor)
    todo.delete(actor=editor)
    publisher = Publisher(kafka_broker.bootstrap_servers, s.kafka_topic, owner)
    created, *rest = [publisher.message(e) for e in todo.collect_events()]
    envelope = json.loads(created.value)
    del envelope["data"]["title"]
    group = unique("notifications")
    service = NotificationsService(s, database_url, group_id=group)
    await service.consumer.open()
    async with running(service.run):
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_broker.bootstrap_servers, acks="all", enable_idempotence=False
        )
        await producer.start()
        try:
            await producer.send_and_wait(
                s.kafka_topic,
                json.dumps(envelope).encode(),
                key=created.key,
                headers=created.headers,
            )
            for m in rest:
                await producer.send_and_wait(s.kafka_topic, m.value, key=m.key, headers=m.headers)
        finally:
            await producer.stop()
        todo_id = str(todo.id)
        await eventually(lambda: parked_are(service.consumer, {todo_id: 3}), what="parked")

        listed = await asyncio.to_thread(
            todo_cli, database_url, "parked", group, "--consumer", "notifications"
        )
        assert listed.returncode == 0, listed.stderr
        (key,) = json.loads(listed.stdout)["parked"]
        assert (key["key"], key["count"]) == (todo_id, 3)
        assert "without a title" in key["head_error"]

        skipped = await asyncio.to_thread(
            todo_cli, database_url, "skip", group, todo_id, "--consumer", "notifications"
        )
        assert skipped.returncode == 0, skipped.stderr
        outcome = json.loads(skipped.stdout)
        assert (outcome["skipped"], outcome["handled"], outcome["released"]) == (1, 2, True)
        statuses = [m.status for m in await service.consumer.parking.messages(todo_id)]
        assert statuses == ["skipped", "handled", "handled"]
        assert notifications_of(database_url, owner) == ["Completed a todo", "Deleted a todo"]
        # The running consumer notices the release made by another process.
        await eventually(lambda: service.consumer.parked_count() == 0, what="release noticed")


def notifications_of(database_url: str, owner: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT message FROM notifications.notifications WHERE owner = %s ORDER BY id",
            (owner,),
        ).fetchall()
    return [r[0] for r in rows]


async def group_is_stable(bootstrap: str, group: str) -> bool:
    """The broker knows the group, with members and a settled assignment."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        (response,) = await admin.describe_consumer_groups([group])
    except KafkaError:
        return False
    finally:
        await admin.close()
    _error, _group, state, *_rest, members = response.groups[0]
    return bool(state == "Stable" and members)


async def topic_exists(bootstrap: str, topic: str) -> bool:
    """Asked without naming it (a metadata request naming a topic creates it on Tansu)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        return topic in await admin.list_topics()
    except KafkaError:
        return False
    finally:
        await admin.close()


def on_partition_one(owner: str, title: str) -> tuple[str, list[Any]]:
    """A todo on partition 1 whether its topic has 2 or 4 partitions (the broker's
    default, should the topic be created by a metadata request)."""
    return life_on_partition(owner, title, 1, of=4)


async def test_a_consumer_survives_a_broker_restart_mid_batch(
    settings: Settings, database_url: str
) -> None:
    """The broker (memory store) restarts while a batch is being handled: the offsets of
    that batch belong to a log that is gone. Committing them would wedge (the commit of
    a missing topic is retried for ever) or, once the topic is back, make the group skip
    that much of the new log. The consumer must re-join and lose nothing new.

    A broker of its own: restarting the shared one would wipe other tests' topics.
    """
    broker = TansuBroker()
    await asyncio.to_thread(broker.start)
    try:
        s = kafka_settings(settings, broker, kafka_topic_partitions=2)
        bootstrap = broker.bootstrap_servers
        handler = RecordingHandler()
        owner = unique("restart")
        first, first_events = on_partition_one(owner, "before")
        held, held_events = on_partition_one(owner, "held")
        handler.held.add(held)
        publisher = Publisher(bootstrap, s.kafka_topic, owner)
        await create_topic(bootstrap, s.kafka_topic, 2)
        await publisher.send(first_events + held_events)
        group = unique("restart")
        service = ConsumerService(s, database_url, handler, group_id=group)
        async with running(service.run):
            await eventually(handler.reached.is_set, what="the consumer to reach the gate")
            await asyncio.to_thread(broker.restart, kill=True)
            # The group re-joins the new, empty broker before the batch is done.
            await eventually(lambda: group_is_stable(bootstrap, group), what="re-joined")
            handler.gate.set()
            # Nobody else re-creates the topic: the consumer must not wait for it.
            await eventually(lambda: topic_exists(bootstrap, s.kafka_topic), what="topic")
        # More of the new log than the old batch's offsets: a stale commit would skip some.
        after = [on_partition_one(owner, f"after {i}") for i in range(3)]
        await publisher.send([e for _, events in after for e in events])
        again = ConsumerService(s, database_url, handler, group_id=group)
        async with running(again.run):
            for todo_id, _ in after:
                await eventually(
                    lambda todo_id=todo_id: (
                        versions(database_url, handler.name, todo_id) == [1, 2, 3, 4]
                    ),
                    within=45,
                    what=f"todo {todo_id} from the new log",
                )
        assert versions(database_url, handler.name, first) == [1, 2, 3, 4]
    finally:
        await asyncio.to_thread(broker.stop, kill=True)


async def test_a_commit_that_cannot_finish_breaks_the_group_instead_of_wedging(
    settings: Settings,
) -> None:
    """After a broker restart, aiokafka retries an offset commit for a topic that is gone
    for ever; the member gives up after its timeout and re-joining re-creates the topic."""
    broker = TansuBroker()
    await asyncio.to_thread(broker.start)
    try:
        s = kafka_settings(settings, broker)
        member = GroupMember(s, "wedge", s.kafka_topic, unique("wedge"))
        stop = asyncio.Event()
        await member.join(stop)
        await eventually(member.assigned.is_set, what="assigned")
        await asyncio.to_thread(broker.restart, kill=True)
        await eventually(lambda: group_is_stable(broker.bootstrap_servers, member.group_id))
        started = time.monotonic()
        with pytest.raises(GroupBroken, match="did not finish"):
            await member.commit({TopicPartition(s.kafka_topic, 0): 5}, member.generation)
        assert time.monotonic() - started < member.timeout + 1
        await member.rejoin(stop, GroupBroken("the commit did not finish"))
        assert await topic_exists(broker.bootstrap_servers, s.kafka_topic)
        assert member.rejoins == 1
        await member.leave()
    finally:
        await asyncio.to_thread(broker.stop, kill=True)


def analytics_created(database_url: str, owner: str) -> int:
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('analytics.daily')").fetchone()
        if exists is None or exists[0] is None:
            return 0
        row = conn.execute(
            "SELECT coalesce(sum(created), 0) FROM analytics.daily WHERE owner = %s", (owner,)
        ).fetchone()
    return int(row[0]) if row else 0


async def test_analytics_keeps_consuming_across_a_broker_restart(
    settings: Settings, database_url: str
) -> None:
    """An idle analytics consumer, the broker restarted under it (every topic, record and
    committed offset gone), the topic re-created and written to again: it catches up."""
    broker = TansuBroker()
    await asyncio.to_thread(broker.start)
    try:
        s = kafka_settings(settings, broker)
        bootstrap = broker.bootstrap_servers
        owner = unique("analytics")
        publisher = Publisher(bootstrap, s.kafka_topic, owner)
        service = AnalyticsService(s, database_url, group_id=unique("analytics"))
        async with running(service.run):
            await eventually(lambda: topic_exists(bootstrap, s.kafka_topic), what="topic")
            await publisher.send([life(owner, f"before {i}")[1][0] for i in range(3)])
            await eventually(lambda: analytics_created(database_url, owner) == 3, what="before")
            await asyncio.to_thread(broker.restart, kill=True)
            await create_topic(bootstrap, s.kafka_topic, s.kafka_topic_partitions)
            await publisher.send([life(owner, f"after {i}")[1][0] for i in range(3)])
            await eventually(
                lambda: analytics_created(database_url, owner) == 6, within=45, what="after"
            )
    finally:
        await asyncio.to_thread(broker.stop, kill=True)
