"""Kafka clients configured from settings, in one place for the relay and the consumers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from tododb.infra.settings import Settings


def bootstrap_servers(settings: Settings) -> str:
    if not settings.kafka_bootstrap_servers:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS is not set (use `todo dev` for a local broker)")
    return settings.kafka_bootstrap_servers


class CachingPartitioner:
    """Kafka's default partitioner (murmur2 of the key), remembering recent keys.

    aiokafka computes murmur2 in pure Python (about 13 µs a key); a todo's events share
    a key, so most lookups hit. Same partitions as the default, always.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._cache: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        return all_partitions[self.index(key, len(all_partitions))]

    def index(self, key: bytes, partitions: int) -> int:
        """Where the default partitioner puts ``key`` among ``partitions`` partitions."""
        slot = (key, partitions)
        index = self._cache.get(slot)
        if index is None:
            if len(self._cache) >= self.capacity:
                self._cache.clear()
            index = self._cache[slot] = (murmur2(key) & 0x7FFFFFFF) % partitions
        return index


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """acks=all always; idempotence only where the broker supports it (not Tansu)."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotence,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "partitioner": CachingPartitioner(),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


class IdempotenceRefused(RuntimeError):
    """The broker answers but will not start an idempotent producer: it is reachable."""


async def start_producer(producer: AIOKafkaProducer, settings: Settings) -> None:
    """``producer.start()``, saying what a failure means. An idempotent producer asks the
    broker for a producer id (``InitProducerId``) once connected; a broker that refuses
    it (Tansu does) is reachable, and retrying will not help until idempotence is off."""
    try:
        await producer.start()
    except KafkaConnectionError:
        raise  # not reachable (bootstrap failed): that is what it says
    except Exception as error:
        if settings.kafka_idempotence and producer.client.cluster.brokers():
            raise IdempotenceRefused(
                f"the broker at {settings.kafka_bootstrap_servers} is reachable but refused "
                f"an idempotent producer (InitProducerId: {error!r}); brokers without "
                "idempotent producers, such as Tansu, need TODO_KAFKA_IDEMPOTENCE=false"
            ) from error
        raise


def make_consumer(settings: Settings, *topics: str, group_id: str) -> AIOKafkaConsumer:
    """Manual commits (after handling): a crash redelivers, never skips."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_heartbeat_interval_ms,
        request_timeout_ms=max(settings.kafka_request_timeout_ms, 5_000),
        # Latency: some brokers (Tansu) hold a fetch for the whole wait even when data
        # is there; 100 ms bounds that at a small cost of idle polling.
        fetch_max_wait_ms=100,
    )


#: Kafka error code for "topic already exists".
_TOPIC_ALREADY_EXISTS = 36


async def create_topic(
    bootstrap_servers: str,
    topic: str,
    num_partitions: int,
    *,
    replication_factor: int = 1,
    exist_ok: bool = True,
    configs: Mapping[str, str] | None = None,
) -> bool:
    """Create *topic* with *num_partitions* partitions via the Kafka admin API.

    Returns True if it was created, False if it already existed (and *exist_ok*).
    An existing topic is left as it is, even with another partition count.

    Raises:
        aiokafka.errors.KafkaError: the broker refused, e.g. ``TopicAlreadyExistsError``
            when *exist_ok* is false.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import for_code

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(
                    name=topic,
                    num_partitions=num_partitions,
                    replication_factor=replication_factor,
                    topic_configs=dict(configs or {}),
                )
            ]
        )
    finally:
        await admin.close()
    for error in response.topic_errors:
        code: int = error[1]
        if code == 0:
            return True
        if code == _TOPIC_ALREADY_EXISTS and exist_ok:
            return False
        message = error[2] if len(error) > 2 else None
        raise for_code(code)(f"creating topic {topic!r}: {message or 'error ' + str(code)}")
    return True


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Where each partition of *topic* ends (the offset its next record would get).

    An empty dict if the topic does not exist. A consumer without a group, so it joins
    nothing and commits nothing; the relay compares this with what the broker acked.

    Raises:
        aiokafka.errors.KafkaError: the broker could not be asked.
    """
    from aiokafka import TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings),
        enable_auto_commit=False,
        request_timeout_ms=max(settings.kafka_request_timeout_ms, 5_000),
    )
    await consumer.start()
    try:
        await consumer.topics()  # fresh metadata: a restarted broker may have lost the topic
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            return {}
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in sorted(partitions)])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()
