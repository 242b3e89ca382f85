"""Follow the global event log and publish each event to Kafka, at least once.

The event store is the outbox: an event is committed once, in PostgreSQL, and this
process publishes it eventually. The position lives in PostgreSQL too (the library's
tracking recorder, table ``relay_tracking``) and moves only after the broker
acknowledged a whole batch, so a crash at any point re-sends, never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from aiokafka import AIOKafkaProducer
from eventsourcing.persistence import IntegrityError, Notification, Tracking
from eventsourcing.postgres import PostgresFactory, PostgresTrackingRecorder
from eventsourcing.utils import Environment

from tododb.aio import wait_or_stop
from tododb.application import TodoApplication
from tododb.bootstrap import application_env, build_application
from tododb.broker import create_topic
from tododb.leadership import AdvisoryLock
from tododb.messaging import backoff_delay, bootstrap_servers, make_producer
from tododb.relay.envelope import OutgoingMessage, to_message
from tododb.settings import Settings

log = logging.getLogger(__name__)

APPLICATION_NAME = "todos"
"""The upstream application whose log is followed (its events table is ``todos_events``)."""
TRACKING_ENV_NAME = "relay"
"""Environment name of the tracking recorder: its table is ``relay_tracking``."""
LOCK_NAME = "relay"
LOCK_CHECK_SECONDS = 2.0


class LostLeadership(Exception):
    """Another relay became active (our lock connection died): stop publishing."""


class Stopped(Exception):
    """Asked to stop while waiting."""


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


def tracking_recorder(settings: Settings, database_url: str) -> PostgresTrackingRecorder:
    env = Environment(TRACKING_ENV_NAME, application_env(settings, database_url))
    env["POSTGRES_POOL_SIZE"] = "2"
    env["POSTGRES_MAX_OVERFLOW"] = "2"
    return PostgresFactory(env).tracking_recorder()


class Envelopes:
    """Stored events → messages, with a todo → owner cache.

    Runs in the relay's thread pool, or in decoder processes (``relay_decode_processes``):
    decoding and envelope building cost about as much CPU as aiokafka's sending, and
    under one GIL they would halve the relay's throughput.
    """

    def __init__(self, app: TodoApplication) -> None:
        self.app = app
        self.owners = OwnerCache()

    def batch(self, notifications: Sequence[Notification]) -> list[OutgoingMessage]:
        return [m for m in map(self.one, notifications) if m is not None]

    def one(self, notification: Notification) -> OutgoingMessage | None:
        """The message for one stored event; None for events with no public name."""
        domain_event: Any = self.app.mapper.to_domain_event(notification)
        try:
            return to_message(domain_event, notification.id, self._owner_of(domain_event))
        except LookupError:
            log.warning(
                "position %s: %s has no public name; not published",
                notification.id,
                notification.topic,
            )
            return None

    def _owner_of(self, domain_event: Any) -> str:
        todo_id: UUID = domain_event.originator_id
        owner = getattr(domain_event, "owner", None)
        if isinstance(owner, str):
            self.owners.put(todo_id, owner)
            return owner
        cached = self.owners.get(todo_id)
        if cached is not None:
            return cached
        first = next(iter(self.app.events.get(todo_id, lte=1)), None)
        owner = getattr(first, "owner", None)
        if not isinstance(owner, str):
            raise RuntimeError(f"todo {todo_id} has no created event with an owner")
        self.owners.put(todo_id, owner)
        return owner


_DECODER: Envelopes | None = None


def _start_decoder(settings: Settings, database_url: str, parent: int) -> None:
    """Initializer of a decoder process: its own application (small pool) and cache.

    A relay killed with SIGKILL cannot stop its pool, so each decoder watches its parent
    and exits when it is gone rather than linger as an orphan.
    """
    global _DECODER
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    small = settings.model_copy(update={"db_pool_size": 2, "db_pool_max_overflow": 2})
    _DECODER = Envelopes(build_application(small, database_url))


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _decode(notifications: Sequence[Notification]) -> list[OutgoingMessage]:
    assert _DECODER is not None, "decoder process not initialised"
    return _DECODER.batch(notifications)


@dataclass(frozen=True)
class RelayStatus:
    position: int
    head: int
    lag: int


class Relay:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        app: TodoApplication | None = None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self._own_app = app is None
        self.app = app or build_application(settings, database_url)
        self.tracking = tracking_recorder(settings, database_url)
        self.decoder = Envelopes(self.app)
        self.topic = settings.kafka_topic
        self.published = 0
        """Messages acknowledged by the broker since start (re-sends included)."""
        self.failures = 0
        """Failed publish attempts since start (each one is followed by a backoff)."""

    def close(self) -> None:
        self.tracking.datastore.close()
        if self._own_app:
            self.app.close()

    # ---- positions ------------------------------------------------------------------

    def position(self) -> int:
        return self.tracking.max_tracking_id(APPLICATION_NAME) or 0

    def status(self) -> RelayStatus:
        position, head = self.position(), self.app.head_position()
        return RelayStatus(position=position, head=head, lag=max(0, head - position))

    # ---- envelopes ------------------------------------------------------------------

    def envelopes(self, notifications: Sequence[Notification]) -> list[OutgoingMessage]:
        """Decode stored events into messages (blocking: may read a todo's first event)."""
        return self.decoder.batch(notifications)

    # ---- publishing -----------------------------------------------------------------

    async def ensure_topic(self) -> None:
        await create_topic(
            bootstrap_servers(self.settings), self.topic, self.settings.kafka_topic_partitions
        )

    async def send_batch(self, producer: AIOKafkaProducer, messages: list[OutgoingMessage]) -> None:
        """Pipeline every send, then wait for every ack; raise if any failed."""
        futures = [
            await producer.send(self.topic, m.value, key=m.key, headers=m.headers) for m in messages
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        self.published += len(messages)

    async def publish(
        self,
        producer: AIOKafkaProducer,
        messages: list[OutgoingMessage],
        stop: asyncio.Event,
    ) -> None:
        """Send until acknowledged; on failure back off and re-send the same messages.

        Re-sent messages keep their CloudEvent ids, so consumers dedupe them.
        """
        attempt = 0
        while True:
            try:
                if attempt:
                    await self.ensure_topic()  # a restarted broker may have lost it
                timeout = self.settings.kafka_request_timeout_ms / 1000 * 2 + 5
                await asyncio.wait_for(self.send_batch(producer, messages), timeout)
                if attempt:
                    log.info("broker is back; re-sent %d messages", len(messages))
                return
            except Exception as e:
                attempt += 1
                self.failures += 1
                delay = backoff_delay(attempt, 0.2, self.settings.relay_backoff_max_seconds)
                log.warning(
                    "publishing %d messages failed (attempt %d): %r; retrying in %.1fs",
                    len(messages),
                    attempt,
                    e,
                    delay,
                )
                await _wait(stop, delay)

    async def start_producer(self, stop: asyncio.Event) -> AIOKafkaProducer:
        attempt = 0
        while True:
            producer = make_producer(self.settings)
            try:
                await producer.start()
                await self.ensure_topic()
                return producer
            except Exception as e:
                with contextlib.suppress(Exception):
                    await producer.stop()
                attempt += 1
                delay = backoff_delay(attempt, 0.2, self.settings.relay_backoff_max_seconds)
                log.warning("broker unreachable: %r; retrying in %.1fs", e, delay)
                await _wait(stop, delay)

    # ---- the loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by for the lock, then relay until ``stop``; back to standby if it is lost."""
        halt = threading.Event()
        bridge = asyncio.create_task(_bridge(stop, halt))
        try:
            while not stop.is_set():
                lock = AdvisoryLock(self.database_url, LOCK_NAME)
                if not await asyncio.to_thread(lock.acquire, halt):
                    return
                try:
                    await self._run_as_leader(stop, lock)
                except LostLeadership as e:
                    log.warning("relay: %s; standing by", e)
                finally:
                    await asyncio.to_thread(lock.release)
        except Stopped:
            pass
        finally:
            halt.set()
            bridge.cancel()

    async def _run_as_leader(self, stop: asyncio.Event, lock: AdvisoryLock) -> None:
        producer = await self.start_producer(stop)
        try:
            attempt = 0
            while not stop.is_set():
                try:
                    await self._follow(producer, stop, lock)
                except (LostLeadership, Stopped):
                    raise
                except Exception as e:  # database trouble: resume from the recorded position
                    attempt += 1
                    delay = backoff_delay(attempt, 0.5, self.settings.relay_backoff_max_seconds)
                    log.warning("relay loop failed: %r; resuming in %.1fs", e, delay)
                    await _wait(stop, delay)
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _follow(
        self, producer: AIOKafkaProducer, stop: asyncio.Event, lock: AdvisoryLock
    ) -> None:
        """Decode the next batches (in other processes) while one is sent and acknowledged.

        A batch is sent only after the previous one was acknowledged and recorded, so a
        re-send never overtakes newer events of the same todo.
        """
        position = await asyncio.to_thread(self.position)
        log.info("relay: following the log from position %d to topic %s", position, self.topic)
        loop = asyncio.get_running_loop()
        pool = self._decoder_pool()
        feed = _Feed(self.app, position, self.settings.relay_batch_size * 4)

        def decode(batch: list[Notification]) -> asyncio.Future[list[OutgoingMessage]]:
            if pool is None:
                return loop.run_in_executor(None, self.decoder.batch, batch)
            return loop.run_in_executor(pool, _decode, batch)

        # Batches being decoded, in log order; as many as there are decoder processes.
        ahead = max(1, self.settings.relay_decode_processes)
        pending: deque[tuple[asyncio.Future[list[OutgoingMessage]], int]] = deque()
        try:
            next_check = time.monotonic() + LOCK_CHECK_SECONDS
            while not stop.is_set():
                while len(pending) < ahead:
                    batch = await feed.take(self.settings.relay_batch_size, wait=not pending)
                    if not batch:
                        break
                    pending.append((decode(batch), batch[-1].id))
                if pending:
                    future, last = pending.popleft()
                    await self._publish_and_record(producer, await future, last, stop)
                if time.monotonic() >= next_check:
                    if not await asyncio.to_thread(lock.is_held):
                        raise LostLeadership("the advisory lock's connection was lost")
                    next_check = time.monotonic() + LOCK_CHECK_SECONDS
        finally:
            for future, _ in pending:
                future.cancel()
            await asyncio.to_thread(feed.close)
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _decoder_pool(self) -> ProcessPoolExecutor | None:
        processes = self.settings.relay_decode_processes
        if processes == 0:
            return None
        return ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded process
            initializer=_start_decoder,
            initargs=(self.settings, self.database_url, os.getpid()),
        )

    async def _publish_and_record(
        self,
        producer: AIOKafkaProducer,
        messages: list[OutgoingMessage],
        position: int,
        stop: asyncio.Event,
    ) -> None:
        if messages:
            await self.publish(producer, messages, stop)
        await asyncio.to_thread(self._record, position)

    def _record(self, position: int) -> None:
        try:
            self.tracking.insert_tracking(Tracking(APPLICATION_NAME, position))
        except IntegrityError:
            # Single-row tracking refuses to move backwards: someone else advanced it.
            raise LostLeadership(
                f"position {position} was already recorded by another relay"
            ) from None

    # ---- replay ---------------------------------------------------------------------

    async def replay(
        self, from_position: int, to_position: int | None = None, stop: asyncio.Event | None = None
    ) -> int:
        """Re-publish positions ``from_position``..``to_position`` (default: the head now).

        For a new downstream system; the relay's own position is not touched, and the
        re-sent events keep their ids, so existing consumers ignore them.
        """
        stop = stop or asyncio.Event()
        last = to_position if to_position is not None else self.app.head_position()
        producer = await self.start_producer(stop)
        sent = 0
        try:
            start = from_position
            while start <= last and not stop.is_set():
                notifications = await asyncio.to_thread(
                    self.app.recorder.select_notifications,
                    start,
                    self.settings.relay_batch_size,
                    last,
                )
                if not notifications:
                    break
                messages = await asyncio.to_thread(self.envelopes, notifications)
                await self.publish(producer, messages, stop)
                sent += len(messages)
                start = notifications[-1].id + 1
        finally:
            await producer.stop()
        return sent


class _Feed:
    """The library's LISTEN/NOTIFY subscription, on a thread, bridged to asyncio."""

    _END = object()

    def __init__(
        self,
        app: TodoApplication,
        position: int,
        capacity: int,
    ) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._halt = threading.Event()
        self._error: BaseException | None = None
        self._subscription = app.recorder.subscribe(gt=position)
        self._subscription.__enter__()
        self._thread = threading.Thread(target=self._pump, name="relay-feed", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for notification in self._subscription:
                while not self._halt.is_set():
                    try:
                        self._queue.put(notification, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._halt.is_set():
                    return
        except BaseException as e:
            self._error = e
        finally:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(self._END)

    async def take(self, limit: int, *, wait: bool = True) -> list[Notification]:
        """What is ready, up to ``limit``; may wait half a second for the first one."""
        try:
            first = self._queue.get_nowait()
        except queue.Empty:
            if not wait:
                return []
            try:
                first = await asyncio.to_thread(self._queue.get, True, 0.5)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(f"the log subscription ended: {self._error!r}") from None
                return []
        batch = [first]
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if any(item is self._END for item in batch):
            raise RuntimeError(f"the log subscription ended: {self._error!r}")
        return batch

    def close(self) -> None:
        self._halt.set()
        with contextlib.suppress(Exception):
            self._subscription.__exit__(None, None, None)
        self._thread.join(timeout=5)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, unless ``stop`` is set first (then raise ``Stopped``)."""
    await wait_or_stop(stop, seconds)
    if stop.is_set():
        raise Stopped


async def _bridge(stop: asyncio.Event, halt: threading.Event) -> None:
    await stop.wait()
    halt.set()
