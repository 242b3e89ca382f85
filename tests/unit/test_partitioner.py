"""The relay's caching partitioner must place every key where Kafka's default would."""

from __future__ import annotations

import uuid

from aiokafka.partitioner import DefaultPartitioner

from tododb.infra.kafka import CachingPartitioner


def test_same_partitions_as_the_default_partitioner() -> None:
    cached = CachingPartitioner(capacity=50)
    default = DefaultPartitioner()
    keys = [str(uuid.uuid4()).encode() for _ in range(200)]
    for partitions in ([0, 1, 2], list(range(12)), [0]):
        for key in keys + keys:  # second pass hits the cache (and overflows it)
            assert cached(key, partitions, partitions) == default(key, partitions, partitions)


def test_keyless_messages_go_to_an_available_partition() -> None:
    assert CachingPartitioner()(None, [0, 1, 2], [2]) == 2


def test_index_matches_the_default_partitioner() -> None:
    cached, default = CachingPartitioner(), DefaultPartitioner()
    for key in (str(uuid.uuid4()).encode() for _ in range(100)):
        assert cached.index(key, 6) == default(key, list(range(6)), list(range(6)))
