"""The pure rules of group commit: what goes into one batch, and which of its commands win.

No I/O and no threads here, so the rules are unit-tested without a database
(``tests/unit/test_group_commit_rules.py``); ``writer`` applies them under the table lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar
from uuid import UUID

Key = tuple[UUID, int]
"""An event's place in the store: (todo id, version), the events table's primary key."""


@dataclass(frozen=True)
class Limits:
    """Bounds of one batch and of the queue behind it.

    A batch holds the table lock while it is written, so its size bounds how long other
    processes' appends wait; a single command larger than a bound still goes, alone.
    """

    commands: int = 500
    events: int = 5_000
    bytes: int = 4 * 1024 * 1024
    queue: int = 10_000
    """Commands queued or being written, per process; beyond it, appends wait for room."""


class Queued(Protocol):
    """What the rules need to know of a queued command."""

    @property
    def keys(self) -> Sequence[Key]: ...

    @property
    def size(self) -> int: ...


Q = TypeVar("Q", bound=Queued)


def take_batch(queue: deque[Q], limits: Limits) -> list[Q]:
    """Pop the commands at the head of ``queue`` that fit in one batch, in order.

    At least one (a command is never split: its events are stored all or none), then as
    many as fit under every limit. Stopping at the first that does not fit keeps the
    queue's order, so no command overtakes an earlier one.
    """
    batch = [queue.popleft()] if queue else []
    events = sum(len(c.keys) for c in batch)
    size = sum(c.size for c in batch)
    while queue and len(batch) < limits.commands:
        head = queue[0]
        if events + len(head.keys) > limits.events or size + head.size > limits.bytes:
            break
        batch.append(queue.popleft())
        events += len(head.keys)
        size += head.size
    return batch


def decide(commands: Iterable[Sequence[Key]], taken: Collection[Key]) -> list[bool]:
    """Which commands may be stored, given the keys already ``taken`` in the store.

    The same answers the primary key would give if the commands were inserted one after
    another in this order: a command wins unless one of its keys is already stored, or
    was won by an earlier command of the batch (two commands on one todo from the same
    version: the first wins), or it repeats a key of its own.
    """
    claimed = set(taken)
    winners = []
    for keys in commands:
        wins = len(set(keys)) == len(keys) and claimed.isdisjoint(keys)
        if wins:
            claimed.update(keys)
        winners.append(wins)
    return winners


def positions_by_key(rows: Iterable[tuple[UUID, int, int]]) -> dict[Key, int]:
    """(todo id, version, notification id) rows, as returned by the insert, by key."""
    return {(todo_id, version): position for todo_id, version, position in rows}


def all_keys(commands: Iterable[Queued]) -> list[Key]:
    return [key for command in commands for key in command.keys]
