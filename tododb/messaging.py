"""Kafka clients configured from settings, in one place for the relay and the consumers."""

from __future__ import annotations

import random
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner, murmur2

from tododb.settings import Settings


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


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter (half fixed, half random); ``attempt`` counts from 1.

    The jitter spreads out clients that failed together, so they do not retry in step.
    """
    delay: float = min(cap, base * 2.0 ** (attempt - 1))
    jitter: float = random.uniform(0, delay / 2)  # noqa: S311 - not crypto
    return delay / 2 + jitter
