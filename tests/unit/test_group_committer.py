"""The group committer's queueing, leadership and outcomes, with a stand-in for the database.

The committer is handed ``connect`` and ``write``; here they are plain functions, so who
leads, what forms a batch and who gets which outcome are tested without PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent

from tests.conftest import wait_until
from tododb.eventstore.batches import Limits
from tododb.eventstore.committer import Append, AsyncAppend, GroupCommitter, Unanswered
from tododb.infra.postgres import DatabaseUnavailable


def events(n: int = 1) -> list[StoredEvent]:
    todo = uuid4()
    return [StoredEvent(todo, v, "topic", b"{}") for v in range(1, n + 1)]


class FakeStore:
    """Numbers events as they are written; can hold a batch until released."""

    def __init__(self) -> None:
        self.batches: list[list[Append]] = []
        self.threads: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.writing = threading.Event()
        self.next_position = 1
        self.connect_error: BaseException | None = None

    @contextmanager
    def connect(self) -> Iterator[str]:
        if self.connect_error is not None:
            raise self.connect_error
        yield "conn"

    def write(self, _conn: str, batch: list[Append]) -> None:
        self.batches.append(batch)
        self.threads.append(threading.get_ident())
        self.writing.set()
        self.hold.wait()
        for item in batch:
            first = self.next_position
            self.next_position += len(item.events)
            item.succeed(list(range(first, self.next_position)))


def committer(store: FakeStore, **limits: int) -> GroupCommitter[str]:
    return GroupCommitter(store.connect, store.write, Limits(**limits), queue_timeout=0.5)


def test_one_writer_writes_its_own_command_on_its_own_thread() -> None:
    store = FakeStore()
    assert committer(store).append(events(2)) == [1, 2]
    assert [len(b) for b in store.batches] == [1]
    assert store.threads == [threading.get_ident()]  # no hand-off to another thread


def test_commands_arriving_while_a_batch_is_written_form_the_next_batch() -> None:
    store = FakeStore()
    gc = committer(store)
    store.hold.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(gc.append, events())
        wait_until(store.writing.is_set, what="the first batch to be written")
        rest = [pool.submit(gc.append, events()) for _ in range(5)]
        wait_until(lambda: len(gc._queue) == 5, what="five commands to queue behind it")
        store.hold.set()
        outcomes = [first.result(5), *(f.result(5) for f in rest)]
    assert [len(b) for b in store.batches] == [1, 5]
    assert sorted(p for o in outcomes for p in o) == list(range(1, 7))


def test_a_batch_is_split_at_its_limits_and_every_command_is_answered() -> None:
    store = FakeStore()
    gc = committer(store, commands=2)
    store.hold.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(gc.append, events())
        wait_until(store.writing.is_set, what="the first batch")
        rest = [pool.submit(gc.append, events()) for _ in range(5)]
        wait_until(lambda: len(gc._queue) == 5, what="five commands to queue")
        store.hold.set()
        assert all(f.result(5) for f in [first, *rest])
    assert [len(b) for b in store.batches] == [1, 2, 2, 1]


def test_no_connection_fails_every_waiting_command_at_once() -> None:
    store = FakeStore()
    gc = committer(store)
    store.hold.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(gc.append, events())
        wait_until(store.writing.is_set, what="the first batch")
        store.connect_error = DatabaseUnavailable("pool timeout")
        rest = [pool.submit(gc.append, events()) for _ in range(4)]
        wait_until(lambda: len(gc._queue) == 4, what="four commands to queue")
        store.hold.set()
        assert first.result(5) == [1]
        for future in rest:
            with pytest.raises(DatabaseUnavailable):
                future.result(5)
    assert [len(b) for b in store.batches] == [1]  # the four failed in one go


def test_a_batch_wide_failure_reaches_each_of_its_commands_and_the_next_batch_works() -> None:
    store = FakeStore()
    gc = committer(store)
    calls = 0

    def flaky(conn: str, batch: list[Append]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("connection lost")
        store.write(conn, batch)

    gc._write = flaky
    with pytest.raises(OperationalError) as raised:
        gc.append(events())
    assert raised.value.__cause__ is not None  # a copy of its own, chained to the original
    assert gc.append(events()) == [1]


def test_each_command_gets_its_own_outcome() -> None:
    store = FakeStore()
    gc = committer(store)
    items = [Append(events()), Append(events()), Append(events())]

    def mixed(_conn: str, batch: list[Append]) -> None:
        batch[0].fail(IntegrityError("conflict"))
        batch[1].succeed([7])
        batch[2].fail(ValueError("bad data"))

    gc._write = mixed
    gc.write_together(items)
    with pytest.raises(IntegrityError):
        items[0].outcome()
    assert items[1].outcome() == [7]
    with pytest.raises(ValueError, match="bad data"):
        items[2].outcome()


def test_a_command_left_unanswered_is_an_error_not_a_hang() -> None:
    store = FakeStore()
    gc = committer(store)
    gc._write = lambda _conn, _batch: None
    with pytest.raises(Unanswered):
        gc.append(events())


def test_a_full_queue_is_a_bounded_wait() -> None:
    store = FakeStore()
    gc = committer(store, queue=1)
    store.hold.clear()
    with ThreadPoolExecutor(2) as pool:
        first: Future[list[int]] = pool.submit(gc.append, events())
        wait_until(store.writing.is_set, what="the first batch")
        with pytest.raises(DatabaseUnavailable, match="queue"):
            gc.append(events())
        store.hold.set()
        assert first.result(5) == [1]


def test_a_writer_interrupted_while_waiting_leaves_the_queue_and_the_lead_moves_on() -> None:
    store = FakeStore()
    gc = committer(store)
    leader, follower, behind = Append(events()), Append(events()), Append(events())
    gc._leading = True  # as if a batch were being written
    gc._queue.extend([leader, follower, behind])

    def interrupted() -> None:
        raise KeyboardInterrupt

    follower.wait = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        gc._follow(follower)
    assert list(gc._queue) == [leader, behind]
    assert not leader.lead  # a plain follower leaving promotes nobody

    leader.promote()  # the batch is done: the head was just made leader, then interrupted
    leader.wait = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        gc._follow(leader)
    assert list(gc._queue) == [behind]
    assert behind.lead  # the lead moved on instead of being lost


# ---- writers that are coroutines (append_async: the API's create path) ----------------------


async def until(predicate: Callable[[], object], what: str) -> None:
    """``wait_until`` for a coroutine: the event loop keeps running meanwhile."""
    deadline = asyncio.get_running_loop().time() + UNTIL_SECONDS
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {UNTIL_SECONDS}s waiting for {what}")
        await asyncio.sleep(0.005)


UNTIL_SECONDS = 5.0


@contextlib.asynccontextmanager
async def held(**limits: int) -> AsyncIterator[tuple[FakeStore, GroupCommitter[str]]]:
    """A committer whose batches are held (``store.hold``) until the test releases them."""
    store = FakeStore()
    gc = committer(store, **limits)
    store.hold.clear()
    try:
        yield store, gc
    finally:
        store.hold.set()
        gc.close()


async def first_batch(store: FakeStore, gc: GroupCommitter[str]) -> asyncio.Task[list[int]]:
    """A coroutine's command, once the committer's thread is writing (and held in) it."""
    first = asyncio.create_task(gc.append_async(events()))
    await until(store.writing.is_set, "the first batch to be written")
    return first


async def test_a_coroutine_alone_has_its_command_written_on_the_committer_thread() -> None:
    store = FakeStore()
    gc = committer(store)
    try:
        assert await gc.append_async(events(2)) == [1, 2]
        assert await gc.append_async(events()) == [3]
    finally:
        gc.close()
    assert [len(b) for b in store.batches] == [1, 1]
    assert threading.get_ident() not in store.threads  # the event loop never writes
    assert len(set(store.threads)) == 1  # one committer thread, reused


async def test_coroutines_arriving_while_a_batch_is_written_form_the_next_batch() -> None:
    async with held() as (store, gc):
        first = await first_batch(store, gc)
        rest = [asyncio.create_task(gc.append_async(events())) for _ in range(5)]
        await until(lambda: len(gc._queue) == 5, "five commands to queue behind it")
        store.hold.set()
        outcomes = await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    assert [len(b) for b in store.batches] == [1, 5]
    assert sorted(p for o in outcomes for p in o) == list(range(1, 7))


async def test_threads_and_coroutines_share_the_queue_and_its_batches() -> None:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(4) as pool:
        async with held() as (store, gc):
            first = loop.run_in_executor(pool, gc.append, events())  # a thread leads
            await until(store.writing.is_set, "the thread's batch")
            tasks = [asyncio.create_task(gc.append_async(events())) for _ in range(3)]
            await until(lambda: len(gc._queue) == 3, "three coroutines to queue")
            threads = [loop.run_in_executor(pool, gc.append, events()) for _ in range(2)]
            await until(lambda: len(gc._queue) == 5, "two threads to queue behind them")
            store.hold.set()
            outcomes = await asyncio.wait_for(asyncio.gather(first, *tasks, *threads), 5)
    assert [len(b) for b in store.batches] == [1, 5]  # a coroutine at the head led the 2nd
    assert sorted(p for o in outcomes for p in o) == list(range(1, 7))


async def test_a_cancelled_coroutine_leaves_the_queue_and_the_others_are_answered() -> None:
    async with held() as (store, gc):
        first = await first_batch(store, gc)
        queued = [asyncio.create_task(gc.append_async(events())) for _ in range(3)]
        await until(lambda: len(gc._queue) == 3, "three commands to queue")
        queued[0].cancel()  # the head: it would have led the next batch
        await until(lambda: len(gc._queue) == 2, "the cancelled command to leave")
        store.hold.set()
        assert await asyncio.wait_for(asyncio.gather(first, *queued[1:]), 5) == [[1], [2], [3]]
    assert queued[0].cancelled()
    assert [len(b) for b in store.batches] == [1, 2]  # the cancelled command was not written


async def test_a_coroutine_cancelled_just_after_being_made_leader_hands_the_lead_on() -> None:
    gc = committer(FakeStore())
    loop = asyncio.get_running_loop()
    leader, behind = AsyncAppend(events(), loop), AsyncAppend(events(), loop)
    gc._leading = True  # as if a batch were being written
    gc._queue.extend([leader, behind])
    task = asyncio.create_task(gc._follow_async(leader))
    await asyncio.sleep(0)  # the task is now waiting for its command
    with gc._lock:
        gc._promote_head()  # the batch is done: the head is made leader...
    task.cancel()  # ...and cancelled before it woke up to lead
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(gc._queue) == [behind]
    assert behind.lead  # the lead moved on instead of being lost


async def test_the_coroutines_of_a_batch_are_woken_with_one_call_into_their_loop() -> None:
    loop = asyncio.get_running_loop()
    woken: list[list[AsyncAppend]] = []
    original = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if callback.__module__ == GroupCommitter.__module__:  # not asyncio's own
            woken.append(args[0])
        return original(callback, *args, **kwargs)

    async with held() as (store, gc):
        first = await first_batch(store, gc)
        rest = [asyncio.create_task(gc.append_async(events())) for _ in range(5)]
        await until(lambda: len(gc._queue) == 5, "five commands to queue")
        loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
        try:
            store.hold.set()
            outcomes = await asyncio.wait_for(asyncio.gather(first, *rest), 5)
        finally:
            del loop.call_soon_threadsafe  # the loop's own method again
    assert [len(b) for b in store.batches] == [1, 5]
    assert sorted(p for o in outcomes for p in o) == list(range(1, 7))
    # One call a batch: the first's command with the queue's head (made leader), then the
    # second's five commands.
    assert [len(items) for items in woken] == [2, 5]
    assert woken[0][1] is woken[1][0]  # the head, woken to lead, then answered


class Stop(BaseException):
    """Not an Exception: a batch interrupted as by KeyboardInterrupt."""


async def test_a_batch_interrupted_wakes_its_coroutines_with_the_error_and_the_next_works() -> None:
    async with held() as (store, gc):
        first = await first_batch(store, gc)
        rest = [asyncio.create_task(gc.append_async(events())) for _ in range(3)]
        await until(lambda: len(gc._queue) == 3, "three commands to queue")
        write = store.write

        def interrupted(_conn: str, _batch: list[Append]) -> None:
            gc._write = write
            raise Stop

        gc._write = interrupted  # the second batch
        store.hold.set()
        outcomes = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), 5)
    assert outcomes[0] == [1]
    assert all(isinstance(o, Stop) for o in outcomes[1:])
    # The committer's thread woke them all and kept no wake back: the next is answered.
    assert await asyncio.wait_for(gc.append_async(events()), 5) == [2]
    gc.close()


async def test_a_committer_written_to_inside_another_s_batch_wakes_its_own() -> None:
    """A ``write`` that appends through a second committer on the same thread: the
    second's wakes are not held back until the first's batch is done (else its next
    leader would never wake, and this thread's second append would wait for ever)."""
    outer_store, inner_store = FakeStore(), FakeStore()
    outer, inner = committer(outer_store), committer(inner_store)
    inner_store.hold.clear()

    def write(conn: str, batch: list[Append]) -> None:
        inner.append(events())  # leads the inner committer's batch, held by the test
        inner.append(events())  # queued behind the coroutine woken to lead meanwhile
        outer_store.write(conn, batch)

    outer._write = write
    pool = ThreadPoolExecutor(1)
    try:
        outer_done = asyncio.get_running_loop().run_in_executor(pool, outer.append, events())
        await until(inner_store.writing.is_set, "the inner batch")
        queued = asyncio.create_task(inner.append_async(events()))
        await until(lambda: len(inner._queue) == 1, "a coroutine queued behind it")
        inner_store.hold.set()
        assert await asyncio.wait_for(outer_done, 5) == [1]
        assert await asyncio.wait_for(queued, 5) == [2]
    finally:
        inner_store.hold.set()
        pool.shutdown(wait=False)
        outer.close()
        inner.close()
    assert sum(len(b) for b in inner_store.batches) == 3  # batched as the timing falls


async def test_the_committer_counts_its_batches_commands_and_queue() -> None:
    async with held() as (store, gc):
        first = await first_batch(store, gc)
        rest = [asyncio.create_task(gc.append_async(events())) for _ in range(5)]
        await until(lambda: len(gc._queue) == 5, "five commands to queue")
        assert gc.figures() == {"batches": 0, "commands": 0, "seconds": 0.0, "queued": 5}
        store.hold.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    figures = gc.figures()
    assert (figures["batches"], figures["commands"], figures["queued"]) == (2, 6, 0)
    assert figures["seconds"] > 0


async def test_no_connection_fails_a_coroutine_with_the_database_unavailable() -> None:
    store = FakeStore()
    store.connect_error = DatabaseUnavailable("pool timeout")
    gc = committer(store)
    try:
        with pytest.raises(DatabaseUnavailable):
            await gc.append_async(events())
        store.connect_error = None
        assert await gc.append_async(events()) == [1]  # the next one goes through
    finally:
        gc.close()


async def test_a_full_queue_is_a_bounded_wait_for_a_coroutine_too() -> None:
    async with held(queue=1) as (store, gc):
        first = await first_batch(store, gc)
        with pytest.raises(DatabaseUnavailable, match="queue"):
            await gc.append_async(events())  # queue_timeout=0.5: no room within it
        store.hold.set()
        assert await asyncio.wait_for(first, 5) == [1]
