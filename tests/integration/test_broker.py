"""The Kafka-compatible broker (Tansu by default) behaves as the relay and consumers need.

Async tests run on pytest-asyncio (``asyncio_mode = "auto"``, session loop).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.servers import free_port
from tododb.devservers.tansu import BrokerHandle, TansuBroker
from tododb.infra.kafka import IdempotenceRefused, create_topic, start_producer
from tododb.infra.kafka import make_producer as tododb_producer
from tododb.infra.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Tansu holds the first join of a group for about half the session timeout, so
# keep it short to keep the tests fast.
GROUP_TIMEOUTS = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_producer(bootstrap_servers: str) -> AIOKafkaProducer:
    # Tansu rejects InitProducerId, so no idempotent producer (see tododb.devservers.tansu).
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
    )


def make_consumer(bootstrap_servers: str, topic: str, group_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP_TIMEOUTS,
    )


async def consume(consumer: AIOKafkaConsumer, count: int, deadline_s: float = 20.0) -> list[Any]:
    """Poll until *count* records arrived (or fail after *deadline_s*)."""
    records: list[Any] = []
    deadline = time.monotonic() + deadline_s
    while len(records) < count:
        assert time.monotonic() < deadline, f"got {len(records)} of {count} records"
        batch = await consumer.getmany(timeout_ms=200)
        for messages in batch.values():
            records.extend(messages)
    return records


async def test_roundtrip_keeps_keys_headers_and_per_key_partition(
    kafka_broker: BrokerHandle,  # noqa: F811
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = unique("roundtrip")
    assert await create_topic(bootstrap, topic, 3) is True
    assert await create_topic(bootstrap, topic, 3) is False  # exist_ok

    producer = make_producer(bootstrap)
    await producer.start()
    try:
        first = await producer.send_and_wait(
            topic,
            b'{"title": "milk"}',
            key=b"todo-0",
            headers=[("event-type", b"TodoCreated"), ("event-id", b"e-0")],
        )
        futures = [
            await producer.send(
                topic,
                f"v{i}".encode(),
                key=f"todo-{i % 4}".encode(),
                headers=[("event-type", b"TodoRenamed"), ("seq", str(i).encode())],
            )
            for i in range(1, 40)
        ]
        sent = [first, *await asyncio.gather(*futures)]
    finally:
        await producer.stop()

    partition_of: dict[bytes, set[int]] = {}
    for i, meta in enumerate(sent):
        partition_of.setdefault(f"todo-{i % 4}".encode(), set()).add(meta.partition)
    assert all(len(parts) == 1 for parts in partition_of.values()), partition_of

    consumer = make_consumer(bootstrap, topic, unique("group"))
    await consumer.start()
    try:
        records = await consume(consumer, len(sent))
    finally:
        await consumer.stop()

    assert len(records) == len(sent)
    for record in records:
        assert record.partition in partition_of[record.key]
    created = next(r for r in records if r.key == b"todo-0" and r.value.startswith(b"{"))
    assert created.headers == (("event-type", b"TodoCreated"), ("event-id", b"e-0"))
    assert (created.partition, created.offset) == (first.partition, first.offset)
    # Per key, records come back in the order they were sent.
    for key in partition_of:
        seqs = [int(dict(r.headers).get("seq", b"0")) for r in records if r.key == key]
        assert seqs == sorted(seqs)


async def test_committed_offsets_survive_consumer_restart(
    kafka_broker: BrokerHandle,  # noqa: F811
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("commits"), unique("group")
    await create_topic(bootstrap, topic, 3)

    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for i in range(30):
            await producer.send(topic, f"first-{i}".encode(), key=f"k{i}".encode())
        await producer.flush()

        consumer = make_consumer(bootstrap, topic, group)
        await consumer.start()
        try:
            first_batch = await consume(consumer, 30)
            await consumer.commit()
            committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
        finally:
            await consumer.stop()
        assert sorted(r.value for r in first_batch) == sorted(
            f"first-{i}".encode() for i in range(30)
        )
        assert sum(committed.values()) == 30

        for i in range(5):
            await producer.send(topic, f"second-{i}".encode(), key=f"k{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    restarted = make_consumer(bootstrap, topic, group)
    await restarted.start()
    try:
        second_batch = await consume(restarted, 5)
        # Nothing from before the commit is delivered again.
        extra = await restarted.getmany(timeout_ms=500)
        assert not any(extra.values())
        for tp, offset in committed.items():
            assert await restarted.committed(TopicPartition(tp.topic, tp.partition)) == offset
    finally:
        await restarted.stop()
    assert sorted(r.value for r in second_batch) == sorted(f"second-{i}".encode() for i in range(5))


async def test_producer_reconnects_after_broker_restart() -> None:
    """A broker of its own: restarting the shared one would wipe other tests' topics."""
    broker = TansuBroker()
    await asyncio.to_thread(broker.start)
    try:
        topic = unique("restart")
        await create_topic(broker.bootstrap_servers, topic, 1)
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap_servers,
            acks="all",
            enable_idempotence=False,
            request_timeout_ms=5000,
        )
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before")
            port = broker.port
            await asyncio.to_thread(broker.restart, kill=True)
            assert broker.port == port
            # The memory store starts empty: recreate the topic, then the same
            # producer object reconnects by itself.
            assert await create_topic(broker.bootstrap_servers, topic, 1) is True
            meta = None
            deadline = time.monotonic() + 20
            while meta is None:
                try:
                    meta = await producer.send_and_wait(topic, b"after")
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert meta.offset == 0  # the "before" record did not survive
        finally:
            await producer.stop()
    finally:
        await asyncio.to_thread(broker.stop)


async def test_a_refused_idempotent_producer_is_told_apart_from_an_unreachable_broker(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
) -> None:
    """Tansu answers but refuses ``InitProducerId``: the error says the broker is
    reachable and what to set; a port where nothing listens stays a connection error."""
    refusing = settings.model_copy(
        update={
            "kafka_bootstrap_servers": kafka_broker.bootstrap_servers,
            "kafka_idempotence": True,
            "kafka_request_timeout_ms": 3000,
        }
    )
    producer = tododb_producer(refusing)
    try:
        with pytest.raises(IdempotenceRefused) as refused:
            await asyncio.wait_for(start_producer(producer, refusing), 60)
        assert "is reachable" in str(refused.value)
        assert "TODO_KAFKA_IDEMPOTENCE=false" in str(refused.value)
    finally:
        await producer.stop()
    nowhere = refusing.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    producer = tododb_producer(nowhere)
    try:
        with pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(start_producer(producer, nowhere), 60)
    finally:
        await producer.stop()
