"""Group commit, leader/follower: concurrent appends of one process share one transaction.

A writer queues its command. If no batch is being written, it becomes the *leader*: it
takes a connection, then every command queued by then (up to ``Limits``), writes them in
one transaction, answers each command's writer, and hands the queue to the writer at its
head, if any, who leads the next batch. The others are *followers*: they wait on their own
command and wake up with its outcome, or to lead. One writer alone therefore writes its
own command at once, on its own thread: no hand-off, no extra latency. Under load, the
commands that arrive while one batch commits form the next one, so the number of
transactions (and WAL flushes) grows with the commit rate, not with the command rate.

A writer may also be a coroutine (``append_async``, the API's path): it waits on its
event loop instead of holding a thread, and when it is to lead, its batch is written on
the committer's own thread, so a batch of N commands costs one thread hand-off, not N.
The coroutines a batch answers, and the next leader, are woken with one call into their
loop, not one each: each such call is a system call during which the loop's thread takes
the GIL, which the writing thread then waits to get back, up to a switch interval (5 ms).

The database work is handed in (``write``), so the queueing is tested without a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Generic, TypeVar
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from tododb.eventstore.batches import Key, Limits, take_batch
from tododb.infra.postgres import DatabaseUnavailable

C = TypeVar("C")

ROOM_POLL_SECONDS = 0.005
"""How often a coroutine waiting for room in a full queue looks again."""


class Unanswered(RuntimeError):
    """A batch was written but left a command without an outcome (a bug, never expected)."""


class Append:
    """One command waiting to be stored (all its events or none), then its outcome."""

    def __init__(self, events: Sequence[StoredEvent]) -> None:
        self.events = list(events)
        self.keys: list[Key] = [(_uuid(e.originator_id), e.originator_version) for e in events]
        self.size = sum(len(e.state) + len(e.topic) for e in self.events)
        self.positions: list[int] | None = None
        self.error: BaseException | None = None
        self.lead = False
        self._wake = self._waker()

    def _waker(self) -> threading.Event | None:
        return threading.Event()

    @property
    def answered(self) -> bool:
        return self.positions is not None or self.error is not None

    def succeed(self, positions: list[int]) -> None:
        self.positions = positions
        self._notify()

    def fail(self, error: BaseException) -> None:
        """Answer with ``error``, unless already answered (an outcome is final)."""
        if not self.answered:
            self.error = error
            self._notify()

    def promote(self) -> None:
        self.lead = True
        self._notify()

    def _notify(self) -> None:
        assert self._wake is not None
        self._wake.set()

    def wait(self) -> None:
        assert self._wake is not None
        self._wake.wait()

    def outcome(self) -> list[int]:
        """The notification ids of the events, in order; or raise this command's error.

        A batch-wide error is shared by every command of the batch, so each writer
        raises a copy of its own: one exception object raised in many threads at once
        would collect their tracebacks all together.
        """
        if self.error is not None:
            raise _own_copy(self.error) from self.error
        if self.positions is None:
            raise Unanswered("the command has no outcome")
        return self.positions


class AsyncAppend(Append):
    """A command whose writer is a coroutine: woken on its event loop, from any thread
    (with the others its committer wakes at once, ``wakes``: see ``_woken_together``)."""

    def __init__(
        self,
        events: Sequence[StoredEvent],
        loop: asyncio.AbstractEventLoop,
        wakes: threading.local | None = None,
    ) -> None:
        super().__init__(events)
        self._loop = loop
        self._wakes = wakes
        self._woken: asyncio.Future[None] = loop.create_future()

    def _waker(self) -> None:
        return None  # woken through its loop, not by a thread's Event

    def _notify(self) -> None:
        deferred: list[AsyncAppend] | None = getattr(self._wakes, "deferred", None)
        if deferred is not None:
            deferred.append(self)  # woken with the rest of its batch (``_woken_together``)
            return
        _wake_on_loop(self._loop, [self])

    def _settle(self) -> None:
        if not self._woken.done():
            self._woken.set_result(None)

    async def woken(self) -> None:
        """Until answered or made leader (both are set before the wake is sent)."""
        await self._woken


@contextlib.contextmanager
def _woken_together(wakes: threading.local) -> Iterator[None]:
    """Wake the coroutines whose commands a committer answers (or makes leader) inside,
    once it is done, with one ``call_soon_threadsafe`` per event loop. ``wakes`` is the
    committer's own, per thread (``deferred``): a batch of another committer, written
    from inside this one's ``write``, wakes its coroutines itself."""
    deferred: list[AsyncAppend] = []
    try:
        wakes.deferred = deferred
        yield
    finally:
        wakes.deferred = None
        by_loop: dict[asyncio.AbstractEventLoop, list[AsyncAppend]] = {}
        for item in deferred:
            by_loop.setdefault(item._loop, []).append(item)
        for loop, items in by_loop.items():
            _wake_on_loop(loop, items)


def _wake_on_loop(loop: asyncio.AbstractEventLoop, items: list[AsyncAppend]) -> None:
    # A closed loop raises RuntimeError: its writers are gone, nobody is left to wake.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle_all, items)


def _settle_all(items: list[AsyncAppend]) -> None:
    for item in items:
        item._settle()


class GroupCommitter(Generic[C]):
    """Writes queued appends in batches, one batch at a time, led by a waiting writer."""

    def __init__(
        self,
        connect: Callable[[], AbstractContextManager[C]],
        write: Callable[[C, list[Append]], None],
        limits: Limits | None = None,
        queue_timeout: float = 5.0,
    ) -> None:
        self._connect = connect
        self._write = write
        self.limits = limits or Limits()
        self._queue_timeout = queue_timeout
        self._lock = threading.Lock()
        self._queue: deque[Append] = deque()
        self._leading = False
        self._room = threading.BoundedSemaphore(self.limits.queue)
        self._leader_thread: ThreadPoolExecutor | None = None
        self._wakes = threading.local()
        """This committer's deferred wakes, per thread (``_woken_together``)."""
        self._batches = 0
        self._commands = 0
        self._seconds = 0.0

    def figures(self) -> dict[str, float]:
        """Since start: batches written, their commands and the seconds spent writing
        them (from taking a connection to answering); and the commands queued now. Read
        at a metrics scrape (``tododb_append_*``); kept as plain sums, one lock a batch."""
        with self._lock:
            return {
                "batches": self._batches,
                "commands": self._commands,
                "seconds": self._seconds,
                "queued": len(self._queue),
            }

    def append(self, events: Sequence[StoredEvent]) -> list[int]:
        """Store one command's events, with others' if they are waiting; their positions.

        Raises the command's own conflict (``IntegrityError``, a ``RecordConflictError``)
        or error, or the batch's when the batch failed as a whole.
        """
        item = Append(events)
        if not self._room.acquire(timeout=self._queue_timeout):
            raise DatabaseUnavailable("the event store's write queue stayed full")
        try:
            if self._enqueue(item) or self._follow(item):
                self._lead()
        finally:
            self._room.release()
        return item.outcome()

    async def append_async(self, events: Sequence[StoredEvent]) -> list[int]:
        """``append`` for a coroutine: the same queue, batches and outcomes, but it waits
        without a thread, and leads by having its batch written on the committer's thread.

        Cancelled while waiting, it leaves the queue as an interrupted ``append`` does; a
        batch already being written completes (the command may be stored, unanswered).
        """
        item = AsyncAppend(events, asyncio.get_running_loop(), self._wakes)
        await self._room_for_async()
        try:
            if self._enqueue(item) or await self._follow_async(item):
                await self._lead_async()
        finally:
            self._room.release()
        return item.outcome()

    async def _room_for_async(self) -> None:
        """A place in the queue, waited for (rarely: 10,000 commands queued) by polling,
        within the same bound as ``append``'s, so the event loop never blocks."""
        if self._room.acquire(blocking=False):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._queue_timeout
        while not self._room.acquire(blocking=False):
            if loop.time() >= deadline:
                raise DatabaseUnavailable("the event store's write queue stayed full")
            await asyncio.sleep(ROOM_POLL_SECONDS)

    async def _follow_async(self, item: AsyncAppend) -> bool:
        try:
            await item.woken()
        except BaseException:
            self._leave(item)
            raise
        return not item.answered

    async def _lead_async(self) -> None:
        """Write a batch on the committer's thread (one at a time, as leaders are); it
        runs to its end and hands the lead on even if this coroutine is cancelled."""
        with self._lock:
            if self._leader_thread is None:
                self._leader_thread = ThreadPoolExecutor(1, thread_name_prefix="group-commit")
            leader = self._leader_thread
        try:
            lead = asyncio.get_running_loop().run_in_executor(leader, self._lead)
        except RuntimeError:  # closed meanwhile (shutting down): lead here, as a thread
            self._lead()
            return
        await asyncio.shield(lead)

    def close(self) -> None:
        """Stop the committer's thread, once the batch it may be writing is done."""
        with self._lock:
            leader, self._leader_thread = self._leader_thread, None
        if leader is not None:
            leader.shutdown(wait=True)

    def write_together(self, items: list[Append]) -> None:
        """Write ``items`` as one batch now, answering each (outside the queue: for tests
        and tools that want a batch of their own making)."""
        with _woken_together(self._wakes):
            self._write_batch(lambda: items, lambda: items)

    def _enqueue(self, item: Append) -> bool:
        """Queue ``item``; whether its writer is to lead (no batch is being written)."""
        with self._lock:
            self._queue.append(item)
            lead = not self._leading
            self._leading = True
            return lead

    def _follow(self, item: Append) -> bool:
        """Wait for ``item``'s outcome, or to lead; whether to lead.

        A writer interrupted while it waits (Ctrl-C) takes its command out of the queue,
        and if it had just been made leader, hands the lead on: else nobody would lead.
        """
        try:
            item.wait()
        except BaseException:
            self._leave(item)
            raise
        return not item.answered

    def _leave(self, item: Append) -> None:
        """Take an interrupted writer's command out of the queue; hand on its lead."""
        with self._lock:
            if item in self._queue:
                self._queue.remove(item)
                if item.lead:
                    self._promote_head()

    def _lead(self) -> None:
        with _woken_together(self._wakes):  # the batch's coroutines and the next leader
            try:
                self._write_batch(self._take, self._take_all)
            finally:
                self._hand_over()

    def _write_batch(
        self, take: Callable[[], list[Append]], unreachable: Callable[[], list[Append]]
    ) -> None:
        """Connect, then take the batch (commands queued while connecting join it), write.

        No connection: every command waiting gets that error at once (``unreachable``),
        so none waits for its own pool timeout in turn. A batch-wide failure: each of its
        commands gets it. Anything left unanswered is a bug, answered as one. Called
        inside ``_woken_together``, which wakes the coroutines it answers.
        """
        batch: list[Append] | None = None
        started = time.perf_counter()
        try:
            with self._connect() as conn:
                batch = take()
                self._write(conn, batch)
        except BaseException as e:
            _fail_all(batch if batch is not None else unreachable(), e)
            if not isinstance(e, Exception):
                raise
        if any(not item.answered for item in batch or []):
            _fail_all(batch or [], Unanswered("the batch left this command unanswered"))
        if batch:
            self._count(len(batch), time.perf_counter() - started)

    def _count(self, commands: int, seconds: float) -> None:
        with self._lock:
            self._batches += 1
            self._commands += commands
            self._seconds += seconds

    def _take(self) -> list[Append]:
        with self._lock:
            return take_batch(self._queue, self.limits)

    def _take_all(self) -> list[Append]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            return items

    def _hand_over(self) -> None:
        with self._lock:
            self._promote_head()

    def _promote_head(self) -> None:
        """The writer at the head of the queue leads next; with none, nobody leads (called
        with the lock held, by a leader that is done, never while a batch is written)."""
        if self._queue:
            self._queue[0].promote()
        else:
            self._leading = False


def _fail_all(items: list[Append], error: BaseException) -> None:
    for item in items:
        item.fail(error)


def _own_copy(error: BaseException) -> BaseException:
    try:
        return copy.copy(error)
    except Exception:
        return error


def _uuid(originator_id: UUID | str) -> UUID:
    return originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))
