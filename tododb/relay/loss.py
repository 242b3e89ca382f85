"""Notice a broker that lost what it acknowledged.

A durable Kafka (replication factor 3, ``acks=all``, ``min.insync.replicas=2``, no
unclean leader election) keeps every acknowledged record, and a partition's offsets only
ever grow. A broker with an in-memory store (Tansu in development) forgets everything
on a restart; the relay's position, kept in PostgreSQL, then claims "lag 0" over an empty
topic. So the relay remembers, per partition, where the last batch the broker
acknowledged starts (``AckedOffsets``) and calls it a loss when the partition now ends
before that batch, or when a later ack comes back at or below it (offsets went back).

Why the start of the last batch and not its end: Tansu reports a partition's end as the
last batch's first offset + 1, not the last record's + 1, so only that much can be
asked of every broker. A loss of just the tail of the last batch goes unnoticed; a
broker that restarted empty, or lost whole batches, does not.
"""

from __future__ import annotations

from typing import NamedTuple


class Shortfall(NamedTuple):
    """A partition that ends before a batch the broker had acknowledged on it."""

    partition: int
    end: int
    """Where the partition ends now (or where a later ack put a batch)."""
    acknowledged: int
    """The first offset of the last batch acknowledged on it."""

    def __str__(self) -> str:
        return (
            f"partition {self.partition} ends at {self.end}, "
            f"a batch at offset {self.acknowledged} was acknowledged"
        )


class AckedOffsets:
    """Per partition, the first offset of the last acknowledged batch, plus one: the
    least the partition's end can be if the broker kept it."""

    def __init__(self) -> None:
        self.floors: dict[int, int] = {}

    def acked(self, partition: int, base_offset: int) -> Shortfall | None:
        """Record a batch's ack; a ``Shortfall`` if it landed at or below an earlier one."""
        floor = self.floors.get(partition, 0)
        self.floors[partition] = base_offset + 1  # acks of one partition come in order
        if base_offset < floor:
            return Shortfall(partition, base_offset, floor - 1)
        return None

    def compare(self, ends: dict[int, int]) -> list[Shortfall]:
        """Partitions whose end (``ends``; a missing one counts as 0) is below the floor."""
        return [
            Shortfall(partition, ends.get(partition, 0), floor - 1)
            for partition, floor in sorted(self.floors.items())
            if ends.get(partition, 0) < floor
        ]

    def reset(self) -> None:
        """Forget: after a loss was reported, the broker's log starts a new history."""
        self.floors.clear()


def describe(shortfalls: list[Shortfall]) -> str:
    return "; ".join(map(str, shortfalls))
