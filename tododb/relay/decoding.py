"""Stored events → Kafka messages: the relay's CPU-heavy half, run beside the sending.

Decoding an event and building its CloudEvents envelope costs several times what
aiokafka's send does. So decoder processes (``relay_decode_processes``) each read a
range of log positions from PostgreSQL themselves and hand back finished messages:
the relay's own process only dispatches ranges and sends, and no stored event crosses
a process boundary.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification

from tododb.application import TodoApplication
from tododb.eventstore import AppendOnlyApplicationRecorder
from tododb.infra.kafka import CachingPartitioner
from tododb.relay.envelope import OutgoingMessage, to_message

log = logging.getLogger(__name__)

Partitioned = dict[int, list[OutgoingMessage]]
"""Messages by Kafka partition, each list in log order."""


class OwnerCache:
    """Bounded todo → owner map, so most events need no lookup of their todo's owner."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._owners: OrderedDict[UUID, str] = OrderedDict()

    def get(self, todo_id: UUID) -> str | None:
        owner = self._owners.get(todo_id)
        if owner is not None:
            self._owners.move_to_end(todo_id)
        return owner

    def put(self, todo_id: UUID, owner: str) -> None:
        self._owners[todo_id] = owner
        self._owners.move_to_end(todo_id)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)


class Envelopes:
    """Log positions → messages, with a todo → owner cache.

    Only ``created`` carries the owner; for the other events it comes from the cache or,
    for todos created outside what this decoder has seen, from one query per range.
    """

    def __init__(self, app: TodoApplication) -> None:
        if not isinstance(app.recorder, AppendOnlyApplicationRecorder):
            raise TypeError("the relay reads the PostgreSQL event store")
        self.app = app
        self.recorder: AppendOnlyApplicationRecorder = app.recorder
        self.owners = OwnerCache()
        self.partitioner = CachingPartitioner()

    def partitioned(self, start: int, stop: int, partitions: int) -> Partitioned:
        """``range``, grouped by the partition Kafka's default partitioner picks for the key.

        Done here, beside the decoding, so the sending process only appends to batches.
        """
        return self.group(self.range(start, stop), partitions)

    def group(self, messages: Sequence[OutgoingMessage], partitions: int) -> Partitioned:
        by_partition: Partitioned = {}
        for message in messages:
            index = self.partitioner.index(message.key, partitions)
            by_partition.setdefault(index, []).append(message)
        return by_partition

    def range(self, start: int, stop: int) -> list[OutgoingMessage]:
        """The messages of log positions ``start``..``stop`` (both included, gaps skipped)."""
        notifications = self.recorder.select_notifications(
            start=start, limit=stop - start + 1, stop=stop
        )
        return self.encode(notifications)

    def encode(self, notifications: Sequence[Notification]) -> list[OutgoingMessage]:
        events: list[tuple[int, str, Any]] = [
            (n.id, n.topic, self.app.mapper.to_domain_event(n)) for n in notifications
        ]
        self._learn_owners(event for _, _, event in events)
        messages = []
        for position, topic, event in events:
            try:
                messages.append(to_message(event, position, self._owner_of(event)))
            except LookupError:
                log.warning("position %s: %s has no public name; not published", position, topic)
        return messages

    def _learn_owners(self, events: Any) -> None:
        """Cache the owners this batch needs: from its created events, else one query."""
        unknown: set[UUID] = set()
        for event in events:
            owner = getattr(event, "owner", None)
            if isinstance(owner, str):
                self.owners.put(event.originator_id, owner)
            elif self.owners.get(event.originator_id) is None:
                unknown.add(event.originator_id)
        if unknown:
            for stored in self.recorder.first_events(sorted(unknown)):
                first: Any = self.app.mapper.to_domain_event(stored)
                owner = getattr(first, "owner", None)
                if isinstance(owner, str):
                    self.owners.put(first.originator_id, owner)

    def _owner_of(self, event: Any) -> str:
        owner = getattr(event, "owner", None)
        if isinstance(owner, str):
            return owner
        cached = self.owners.get(event.originator_id)
        if cached is None:
            raise RuntimeError(f"todo {event.originator_id} has no created event with an owner")
        return cached


# ---- decoder processes ---------------------------------------------------------------

_DECODER: Envelopes | None = None


def start_decoder(app_env: dict[str, str], parent: int) -> None:
    """Initializer of a decoder process: its own application (small pool) and cache.

    A relay killed with SIGKILL cannot stop its pool, so each decoder watches its parent
    and exits when it is gone rather than linger as an orphan.
    """
    global _DECODER
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    small = {**app_env, "POSTGRES_POOL_SIZE": "2", "POSTGRES_MAX_OVERFLOW": "2"}
    _DECODER = Envelopes(TodoApplication(env=small))


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def decode_range(start: int, stop: int, partitions: int) -> Partitioned:
    """In a decoder process: the messages of positions ``start``..``stop``, by partition."""
    assert _DECODER is not None, "decoder process not initialised"
    return _DECODER.partitioned(start, stop, partitions)
