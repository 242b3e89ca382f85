"""A poison message ends in the dead-letter topic while later events are still handled;
``redrive`` puts dead letters back on the topic."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.downstream import eventually, kafka_settings, read_topic, running, unique
from tododb.consumers.core import dlq_topic, redrive
from tododb.consumers.runner import NotificationsService
from tododb.devservers.tansu import BrokerHandle
from tododb.domain import Todo
from tododb.infra.kafka import create_topic
from tododb.infra.settings import Settings
from tododb.monitoring.workers import ConsumerMonitor
from tododb.relay.envelope import to_message

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def notifications_of(database_url: str, owner: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('notifications.notifications')").fetchone()
        if exists is None or exists[0] is None:
            return []
        rows = conn.execute(
            "SELECT message FROM notifications.notifications WHERE owner = %s ORDER BY id",
            (owner,),
        ).fetchall()
    return [r[0] for r in rows]


async def parked_are(service: NotificationsService, want: dict[str, int]) -> bool:
    """The group's parked keys, with how many messages each holds back, are ``want``."""
    return {k.key: k.count for k in await service.consumer.parking.summary()} == want


def dlq_depth(monitor: ConsumerMonitor) -> float | None:
    """``tododb_dlq_depth`` of the monitor's group, as its ``/metrics`` shows it."""
    found = [
        sample.value
        for family in monitor.collect()
        if family.name == "tododb_dlq_depth"
        for sample in family.samples
    ]
    return found[0] if found else None


async def test_poison_messages_go_to_the_dlq_and_later_events_are_handled(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
) -> None:
    s = kafka_settings(
        settings,
        kafka_broker,
        consumer_max_attempts=3,
        kafka_topic_partitions=1,
        lag_refresh_seconds=0.2,
    )
    bootstrap = kafka_broker.bootstrap_servers
    await create_topic(bootstrap, s.kafka_topic, 1)
    owner = unique("alice")
    # Someone else acts on alice's todos (nobody is notified of their own actions; the
    # consumer knows no list here, so the owner is the one notified).
    first = Todo.create(owner=owner, title="before the poison", actor="bob")
    later = Todo.create(owner=owner, title="after the poison", actor="bob")
    good_before = to_message(first.collect_events()[0], 1, owner)
    good_after = to_message(later.collect_events()[0], 4, owner)
    # Well-formed envelope the handler cannot process: a created event without a title.
    poison = Todo.create(owner=owner, title="x", actor="bob")
    envelope = json.loads(to_message(poison.collect_events()[0], 3, owner).value)
    del envelope["data"]["title"]
    unprocessable = json.dumps(envelope).encode()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(
            s.kafka_topic, good_before.value, key=good_before.key, headers=good_before.headers
        )
        await producer.send_and_wait(s.kafka_topic, b"\x00 not a cloudevent", key=b"k")
        await producer.send_and_wait(
            s.kafka_topic,
            unprocessable,
            key=b"k",
            headers=[("content-type", b"application/cloudevents+json")],
        )
        await producer.send_and_wait(
            s.kafka_topic, good_after.value, key=good_after.key, headers=good_after.headers
        )
    finally:
        await producer.stop()

    group = unique("notifications")
    service = NotificationsService(s, database_url, group_id=group)
    async with running(service.run):
        await eventually(
            lambda: len(notifications_of(database_url, owner)) == 2, what="both good events handled"
        )
        await eventually(lambda: service.consumer.counters.dead_lettered == 2, what="2 in DLQ")
        # Each dead letter also parks its todo (the CloudEvent subject; for garbage, the
        # Kafka key): that todo's later messages would wait behind it.
        await eventually(
            lambda: parked_are(service, {"k": 1, str(poison.id): 1}), what="both parked"
        )
    assert notifications_of(database_url, owner) == [
        'New todo "before the poison"',
        'New todo "after the poison"',
    ]
    assert service.consumer.counters.retries == 2  # 3 attempts for the unprocessable one

    dead = await read_topic(bootstrap, dlq_topic(s.kafka_topic, group))
    assert len(dead) == 2
    headers: list[dict[str, Any]] = [{k: v.decode() for k, v in r.headers} for r in dead]
    garbage, bad_data = sorted(headers, key=lambda h: int(h["dlq-origin-offset"]))
    assert garbage["dlq-attempts"] == "1"
    assert "BadEnvelope" in garbage["dlq-error"]
    assert bad_data["dlq-attempts"] == "3"
    assert "title" in bad_data["dlq-error"]
    for h, offset in ((garbage, "1"), (bad_data, "2")):
        assert h["dlq-origin-topic"] == s.kafka_topic
        assert (h["dlq-origin-partition"], h["dlq-origin-offset"]) == ("0", offset)
        assert h["dlq-group"] == group
    assert {r.value for r in dead} == {b"\x00 not a cloudevent", unprocessable}

    # The worker's /metrics shows them as the group's DLQ depth, until they are redriven.
    monitor = ConsumerMonitor(s, database_url, service.consumer)
    monitor.watcher.start()
    try:
        await eventually(lambda: dlq_depth(monitor) == 2, what="tododb_dlq_depth 2")
        # Redrive: both go back to the topic (once: a second run finds nothing new).
        assert await redrive(s, group) == 2
        assert await redrive(s, group) == 0
        await eventually(lambda: dlq_depth(monitor) == 0, what="tododb_dlq_depth 0")
    finally:
        await asyncio.to_thread(monitor.watcher.stop)
    on_topic = await read_topic(bootstrap, s.kafka_topic)
    assert len(on_topic) == 6
    assert all(not any(k.startswith("dlq-") for k, _ in r.headers) for r in on_topic[4:])
