"""The aggregates this process has just stored, so that its next command on one skips the
read (the service layer keeps its todos here).

A command on a cached aggregate decides on the cached state and appends. The append is the
check: optimistic concurrency only accepts it if the aggregate still had exactly the cached
version, in which case the cached state *was* the stored state and the decision stands.
Any other outcome (another process won the version, a precondition, a no-op, an
access or domain refusal) is decided again on a fresh read, so a stale entry can cost a
retry but never a wrong answer.

An entry is taken out while a command uses it (no two commands share one object) and put
back, as a copy, only after a successful append. The cache holds at most ``maxsize``
aggregates, least recently written dropped first; a size of 0 turns it off.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Protocol, Self, TypeVar
from uuid import UUID


class Detachable(Protocol):
    @property
    def id(self) -> UUID: ...

    @property
    def version(self) -> int: ...

    def detached_copy(self) -> Self:
        """A copy sharing no mutable state and no pending events with the original."""
        ...


A = TypeVar("A", bound=Detachable)


class CommandCache(Generic[A]):
    """At most ``maxsize`` aggregates as this process last stored them (thread-safe)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._held: OrderedDict[UUID, A] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, aggregate_id: UUID) -> A | None:
        """The cached aggregate, removed: the caller owns it until it ``put``s a newer one."""
        with self._lock:
            return self._held.pop(aggregate_id, None)

    def put(self, aggregate: A) -> None:
        """Remember ``aggregate`` as just stored (a copy: the caller keeps using its own),
        unless a newer version is already here."""
        if self.maxsize <= 0:
            return
        copy = aggregate.detached_copy()
        with self._lock:
            held = self._held.get(aggregate.id)
            if held is not None and held.version >= copy.version:
                return
            self._held[aggregate.id] = copy
            self._held.move_to_end(aggregate.id)
            while len(self._held) > self.maxsize:
                self._held.popitem(last=False)

    def __len__(self) -> int:
        return len(self._held)
