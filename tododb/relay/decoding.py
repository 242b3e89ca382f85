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
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.persistence import Notification

from tododb.application import TodoApplication
from tododb.eventstore import AppendOnlyApplicationRecorder
from tododb.infra.gc_tuning import settle_after_startup
from tododb.infra.kafka import CachingPartitioner
from tododb.relay.envelope import Failure, OutgoingMessage, UnpublishedEvent, to_message

log = logging.getLogger(__name__)

Partitioned = dict[int, list[OutgoingMessage]]
"""Messages by Kafka partition, each list in log order."""


class Encoded(NamedTuple):
    """A range, encoded: its messages by partition, and the events that failed."""

    messages: Partitioned
    failures: list[Failure]


class Undecodable(Exception):
    """An event could not be encoded (from ``Envelopes.range``, which is all or nothing)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"position {failure.position} (todo {failure.todo_id}): {failure.error}")
        self.failure = failure


class OwnerCache:
    """Bounded aggregate → owner map, so most events need no lookup of their owner.

    Todos and lists alike: both aggregates' ``Created`` events name an ``owner`` (a
    list's is the user who created it), and their ids never collide (uuid4, or uuid5 in
    namespaces of their own for idempotent creates and Inboxes)."""

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
    """Log positions → messages, with an aggregate → owner cache.

    Only ``created`` carries the owner (of a todo or of a list); for the other events it
    comes from the cache or, for aggregates created outside what this decoder has seen,
    from one query per range.
    """

    def __init__(self, app: TodoApplication) -> None:
        if not isinstance(app.recorder, AppendOnlyApplicationRecorder):
            raise TypeError("the relay reads the PostgreSQL event store")
        self.app = app
        self.recorder: AppendOnlyApplicationRecorder = app.recorder
        self.owners = OwnerCache()
        self.partitioner = CachingPartitioner()

    def decode(self, start: int, stop: int, partitions: int) -> Encoded:
        """Positions ``start``..``stop``: their messages grouped by the partition Kafka's
        default partitioner picks for the key (done here, beside the decoding, so the
        sending process only appends to batches), and the events that failed."""
        messages, failures = self.convert(self._select(start, stop))
        return Encoded(self.group(messages, partitions), failures)

    def partitioned(self, start: int, stop: int, partitions: int) -> Partitioned:
        """``range``, grouped by partition (raises on an event that cannot be encoded)."""
        return self.group(self.range(start, stop), partitions)

    def group(self, messages: Sequence[OutgoingMessage], partitions: int) -> Partitioned:
        by_partition: Partitioned = {}
        for message in messages:
            index = self.partitioner.index(message.key, partitions)
            by_partition.setdefault(index, []).append(message)
        return by_partition

    def range(self, start: int, stop: int) -> list[OutgoingMessage]:
        """The messages of log positions ``start``..``stop`` (both included, gaps skipped).

        Raises ``Undecodable`` for the first event that cannot be encoded: for callers
        that want all or nothing; the relay itself uses ``decode`` and quarantines.
        """
        messages, failures = self.convert(self._select(start, stop))
        if failures:
            raise Undecodable(failures[0])
        return messages

    def _select(self, start: int, stop: int) -> Sequence[Notification]:
        selected: Sequence[Notification] = self.recorder.select_notifications(
            start=start, limit=stop - start + 1, stop=stop
        )
        return selected

    def convert(
        self, notifications: Sequence[Notification]
    ) -> tuple[list[OutgoingMessage], list[Failure]]:
        """Messages, and the events that failed to decode or encode (in log order).

        One bad event fails alone: a stored event that does not decode, a todo or list
        without an owner, a message that must not be published. Types the contract does not
        name are left out by design (logged), neither sent nor failed.
        """
        events, failures = self._decode(notifications)
        self._learn_owners(event for _, event in events)
        messages = []
        for n, event in events:
            try:
                messages.append(to_message(event, n.id, self._owner_of(event)))
            except UnpublishedEvent:
                log.warning("position %s: %s has no public name; not published", n.id, n.topic)
            except Exception as e:  # anything else: this event is poison, not the range
                failures.append(Failure.of(n, e))
        return messages, sorted(failures)

    def _decode(
        self, notifications: Sequence[Notification]
    ) -> tuple[list[tuple[Notification, Any]], list[Failure]]:
        """Stored events → domain events; one that does not decode fails alone."""
        to_domain_event = self.app.mapper.to_domain_event
        events, failures = [], []
        for n in notifications:
            try:
                events.append((n, to_domain_event(n)))
            except Exception as e:
                failures.append(Failure.of(n, e))
        return events, failures

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
                try:
                    first: Any = self.app.mapper.to_domain_event(stored)
                except Exception:  # noqa: S112 - its events fail alone, for want of an owner
                    continue
                owner = getattr(first, "owner", None)
                if isinstance(owner, str):
                    self.owners.put(first.originator_id, owner)

    def _owner_of(self, event: Any) -> str:
        owner = getattr(event, "owner", None)
        if isinstance(owner, str):
            return owner
        cached = self.owners.get(event.originator_id)
        if cached is None:
            raise RuntimeError(
                f"aggregate {event.originator_id} has no created event with an owner"
            )
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
    settle_after_startup()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def decode_range(start: int, stop: int, partitions: int) -> Encoded:
    """In a decoder process: positions ``start``..``stop``, encoded (``Envelopes.decode``).

    Failures go back to the relay's process, which alone decides, in log order, what
    is quarantined and held: decoders see one range each, several at once.
    """
    assert _DECODER is not None, "decoder process not initialised"
    return _DECODER.decode(start, stop, partitions)
