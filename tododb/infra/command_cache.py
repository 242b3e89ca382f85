"""The aggregates this process has just stored, so that its next command on one needs no
read at all in the usual case, instead of replaying the aggregate's whole history (the
service layer keeps its todos here; the library's cache does the same, with a deep copy
on every read).

An entry is taken out while a command uses it (no two commands share one object) and put
back, as a copy, only after a successful append. The cache holds at most ``maxsize``
aggregates, least recently written dropped first; a size of 0 turns it off.

A copy may be behind: another process may have written the aggregate since. The service
layer decides on it anyway and lets the append check it (the store refuses a version
already taken); a decision that appends nothing is checked by a read instead
(``TodoApplication._decide_and_append``).
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
