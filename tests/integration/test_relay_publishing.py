"""How the relay builds and places messages: owners from the store, Kafka's partitioning."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest
from aiokafka.partitioner import DefaultPartitioner

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.downstream import kafka_settings, read_topic, unique
from tododb.application import TodoApplication
from tododb.devservers.tansu import BrokerHandle
from tododb.entrypoints.bootstrap import build_relay
from tododb.infra.settings import Settings
from tododb.relay.decoding import Envelopes

pytestmark = pytest.mark.integration


def test_a_range_without_the_created_events_still_gets_each_owner(
    fresh_app: TodoApplication,
) -> None:
    owners = [unique("owner") for _ in range(3)]
    todos = [fresh_app.create_todo(owners[i % 3], title=f"todo {i}").todo for i in range(9)]
    for i, todo in enumerate(todos):
        fresh_app.complete_todo(owners[i % 3], todo.id)

    # A decoder that never saw positions 1..9 (a restarted relay, another process).
    messages = Envelopes(fresh_app).range(10, 18)

    assert [m.position for m in messages] == list(range(10, 19))
    for i, message in enumerate(messages):
        envelope = json.loads(message.value)
        assert envelope["type"] == "todos.task.completed"
        assert envelope["subject"] == str(todos[i].id)
        assert envelope["owner"] == owners[i % 3]


@pytest.mark.asyncio(loop_scope="session")
async def test_messages_go_where_kafkas_default_partitioner_puts_them_in_log_order(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    fresh_database_url: str,
    fresh_app: TodoApplication,
) -> None:
    s = kafka_settings(settings, kafka_broker, kafka_topic_partitions=3)
    owner = unique("erin")
    for i in range(12):
        todo = fresh_app.create_todo(owner, title=f"todo {i}").todo
        fresh_app.complete_todo(owner, todo.id)
        fresh_app.reopen_todo(owner, todo.id)
    relay = build_relay(s, fresh_database_url, fresh_app)
    stop = asyncio.Event()
    producer = await relay.start_producer(stop)
    try:
        # Encoded for one partition while the topic has three (it grew meanwhile): the
        # relay must re-place every message before sending.
        messages = relay.decoder.partitioned(1, 36, partitions=1)
        assert list(messages) == [0]
        assert await relay.publish(producer, messages, 1, stop) == 36
    finally:
        await producer.stop()
        relay.tracking.datastore.close()

    records = await read_topic(str(s.kafka_bootstrap_servers), s.kafka_topic)
    assert len(records) == 36
    default = DefaultPartitioner()
    versions: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.partition == default(record.key, [0, 1, 2], [0, 1, 2])
        assert dict(record.headers) == {"content-type": b"application/cloudevents+json"}
        versions[record.key].append(json.loads(record.value)["aggregateversion"])
    assert len(versions) == 12
    assert all(v == [1, 2, 3] for v in versions.values())
