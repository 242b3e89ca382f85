"""Read-your-writes: wait until a read model has reached a log position.

One background thread per API process LISTENs for the projections' commit notifications
and refreshes the positions. Requests wait on the event loop, not in a thread: each wait
is an asyncio future the watcher thread resolves (``call_soon_threadsafe``) once its
position is applied, so a thousand pending waits cost no worker threads and no database
connections. ``WaitSlots`` caps how many may pend, per process and per user.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Generic, TypeVar

import psycopg

from tododb.infra.retry import Backoff
from tododb.projections.queries import KINDS, VIEWS_CHANNEL, read_position

log = logging.getLogger(__name__)
RECONNECT_BACKOFF = Backoff(0.2, 1.0)
"""Capped low: read-your-writes resumes within a second of the database's return."""

T = TypeVar("T", bound=Hashable)


class PendingWaits(Generic[T]):
    """Waiters by view and position; ``due`` hands back (and forgets) those now reached.

    A linear scan per refresh: the number of waiters is capped by ``WaitSlots``.
    """

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[T, int]] = {}

    def __len__(self) -> int:
        return sum(len(waiters) for waiters in self._by_kind.values())

    def add(self, kind: str, position: int, waiter: T) -> None:
        self._by_kind.setdefault(kind, {})[waiter] = position

    def discard(self, kind: str, waiter: T) -> None:
        self._by_kind.get(kind, {}).pop(waiter, None)

    def due(self, positions: Mapping[str, int]) -> list[T]:
        reached: list[T] = []
        for kind, waiters in self._by_kind.items():
            applied = positions.get(kind, 0)
            done = [w for w, position in waiters.items() if position <= applied]
            for waiter in done:
                del waiters[waiter]
            reached.extend(done)
        return reached


class WaitRefused(Exception):
    """Too many waits pending: for the whole process, or for one user (``per_user``)."""

    def __init__(self, *, per_user: bool) -> None:
        super().__init__("per user" if per_user else "per process")
        self.per_user = per_user


class WaitSlots:
    """Counts pending waits so a flood of far-ahead reads cannot pile up without bound."""

    def __init__(self, max_total: int, max_per_user: int) -> None:
        self.max_total = max_total
        self.max_per_user = max_per_user
        self.active = 0
        self._per_user: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        """A slot for the duration of the block; raises ``WaitRefused`` when none is free."""
        self._acquire(user_id)
        try:
            yield
        finally:
            self._release(user_id)

    def _acquire(self, user_id: str) -> None:
        with self._lock:
            mine = self._per_user.get(user_id, 0)
            if mine >= self.max_per_user:
                raise WaitRefused(per_user=True)
            if self.active >= self.max_total:
                raise WaitRefused(per_user=False)
            self._per_user[user_id] = mine + 1
            self.active += 1

    def _release(self, user_id: str) -> None:
        with self._lock:
            self.active -= 1
            left = self._per_user.pop(user_id) - 1
            if left:
                self._per_user[user_id] = left


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _wake(futures: list[asyncio.Future[None]]) -> None:
    """From the watcher thread: resolve each future on its own event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for future in futures:
        by_loop.setdefault(future.get_loop(), []).append(future)
    for loop, batch in by_loop.items():
        with suppress(RuntimeError):  # the loop has closed: nobody waits on it any more
            loop.call_soon_threadsafe(_resolve, batch)


class PositionWatcher:
    def __init__(self, database_url: str, schema: str) -> None:
        self.database_url = database_url
        self.schema = schema
        self.positions: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._lock = threading.Lock()
        self._pending: PendingWaits[asyncio.Future[None]] = PendingWaits()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="position-watcher", daemon=True)
        self._listeners: list[Callable[[Mapping[str, int]], None]] = []

    def add_listener(self, listener: Callable[[Mapping[str, int]], None]) -> None:
        """Called from the watcher's thread with the positions after every refresh (the
        stream hub wakes on them); add before ``start``."""
        self._listeners.append(listener)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def reached(self, kind: str, position: int) -> bool:
        return self.positions.get(kind, 0) >= position

    def pending(self) -> int:
        """Waits not yet resolved (for tests and metrics)."""
        with self._lock:
            return len(self._pending)

    def _refresh(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        fresh = {kind: read_position(conn, self.schema, kind) for kind in KINDS}
        with self._lock:
            self.positions = fresh
            due = self._pending.due(fresh)
        if due:
            _wake(due)
        for listener in self._listeners:
            listener(fresh)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {VIEWS_CHANNEL}")
                    self._refresh(conn)
                    failures = 0
                    while not self._stop.is_set():
                        # Wake on notifications; the timeout re-reads once a second in case
                        # one was missed across a reconnect.
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            pass
                        self._refresh(conn)
            except psycopg.Error as e:
                log.warning("position watcher lost its connection: %s", e)
                failures += 1
                self._stop.wait(RECONNECT_BACKOFF.delay(failures))

    async def wait(self, kind: str, position: int) -> None:
        """Return once ``kind`` has applied ``position`` (bound it with ``asyncio.timeout``).

        Awaits on the running event loop: no thread is blocked while it waits.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self.reached(kind, position):
                return
            self._pending.add(kind, position, future)
        try:
            await future
        finally:
            with self._lock:
                self._pending.discard(kind, future)
