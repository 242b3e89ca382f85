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
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder

from tododb.application import TodoApplication
from tododb.eventstore import AppendOnlyApplicationRecorder
from tododb.infra.kafka import bootstrap_servers, create_topic, make_producer
from tododb.infra.leadership import AdvisoryLock
from tododb.infra.retry import Backoff, Stopped, retry_async, sleep_or_stop
from tododb.infra.settings import Settings
from tododb.relay.decoding import Envelopes, Partitioned, decode_range, start_decoder
from tododb.relay.head import CommitSignal
from tododb.relay.status import LOCK_NAME

log = logging.getLogger(__name__)

APPLICATION_NAME = TodoApplication.name
"""The upstream application whose log is followed (its events table is ``todos_events``)."""
TRACKING_ENV_NAME = "relay"
"""Environment name of the tracking recorder: its table is ``relay_tracking``."""
LOCK_CHECK_SECONDS = 2.0


class LostLeadership(Exception):
    """Another relay became active (our lock connection died): stop publishing."""


@dataclass(frozen=True)
class RelayStatus:
    position: int
    head: int
    lag: int


class Relay:
    """Handed its application (the log), its tracking recorder (``relay_tracking``) and
    the database URL its advisory lock connects to; it builds none of them."""

    def __init__(
        self,
        settings: Settings,
        app: TodoApplication,
        tracking: PostgresTrackingRecorder,
        database_url: str,
        *,
        owns_app: bool = False,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self._own_app = owns_app
        self.app = app
        self.tracking = tracking
        self.decoder = Envelopes(self.app)
        self.recorder: AppendOnlyApplicationRecorder = self.decoder.recorder
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

    # ---- publishing -----------------------------------------------------------------

    async def ensure_topic(self) -> None:
        await create_topic(
            bootstrap_servers(self.settings), self.topic, self.settings.kafka_topic_partitions
        )

    async def partition_count(self, producer: AIOKafkaProducer) -> int:
        return len(await producer.partitions_for(self.topic))

    async def send(self, producer: AIOKafkaProducer, messages: Partitioned, partitions: int) -> int:
        """Append to one batch per partition, send them all, wait for every ack.

        aiokafka's batch API: no future, coroutine or partitioner call per message (those
        were most of the relay's own CPU). Batches of one partition go out in order.
        Returns how many messages were acknowledged; raises if any batch failed.
        """
        current = await self.partition_count(producer)
        if current != partitions:  # the topic grew since the range was encoded
            messages = self.decoder.group([m for ms in messages.values() for m in ms], current)
        futures = []
        for partition, batch_messages in messages.items():
            batch = producer.create_batch()
            for m in batch_messages:
                while (
                    batch.append(key=m.key, value=m.value, timestamp=None, headers=m.headers)
                    is None
                ):
                    if not batch.record_count():
                        raise ValueError(f"message {m.event_id} is larger than a whole batch")
                    futures.append(
                        await producer.send_batch(batch, self.topic, partition=partition)
                    )
                    batch = producer.create_batch()
            if batch.record_count():
                futures.append(await producer.send_batch(batch, self.topic, partition=partition))
        results = await asyncio.gather(*futures, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return sum(map(len, messages.values()))

    async def publish(
        self,
        producer: AIOKafkaProducer,
        messages: Partitioned,
        partitions: int,
        stop: asyncio.Event,
    ) -> int:
        """Send until acknowledged; on failure back off and re-send the same messages.

        Re-sent messages keep their CloudEvent ids, so consumers dedupe them.
        """
        attempts = 0

        async def attempt() -> int:
            nonlocal attempts
            attempts += 1
            try:
                if attempts > 1:
                    await self.ensure_topic()  # a restarted broker may have lost it
                timeout = self.settings.kafka_request_timeout_ms / 1000 * 2 + 5
                return await asyncio.wait_for(self.send(producer, messages, partitions), timeout)
            except Exception:
                self.failures += 1
                raise

        what = f"publishing {sum(map(len, messages.values()))} messages"
        sent = await retry_async(attempt, stop=stop, backoff=self._backoff(0.2), what=what)
        self.published += sent
        if attempts > 1:
            log.info("broker is back; re-sent %d messages", sent)
        return sent

    async def start_producer(self, stop: asyncio.Event) -> AIOKafkaProducer:
        async def start() -> AIOKafkaProducer:
            # No linger: the relay hands over whole batches, there is nothing to wait for.
            producer = make_producer(self.settings, linger_ms=0)
            try:
                await producer.start()
                await self.ensure_topic()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            return producer

        return await retry_async(
            start, stop=stop, backoff=self._backoff(0.2), what="starting the producer"
        )

    def _backoff(self, base: float) -> Backoff:
        return Backoff(base, self.settings.relay_backoff_max_seconds)

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
                    delay = self._backoff(0.5).delay(attempt)
                    log.warning("relay loop failed: %r; resuming in %.1fs", e, delay)
                    if await sleep_or_stop(stop, delay):
                        raise Stopped("relay") from e
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _follow(
        self, producer: AIOKafkaProducer, stop: asyncio.Event, lock: AdvisoryLock
    ) -> None:
        """Dispatch position ranges to the decoders; send each range's messages in order.

        Up to one range per decoder process is read and encoded ahead, while the oldest
        is sent. A range is sent only after the previous one was acknowledged, so a
        re-send never overtakes newer events of the same todo. Positions are recorded
        in order, each while the next range is being sent.

        The range split is what the library's subscription (one cursor, one thread)
        cannot do: it lets the decoder processes read and encode in parallel.
        """
        position = await asyncio.to_thread(self.position)
        log.info("relay: following the log from position %d to topic %s", position, self.topic)
        loop = asyncio.get_running_loop()
        pool = self._decoder_pool()
        commits = CommitSignal(self.recorder)

        def encode(start: int, last: int, partitions: int) -> asyncio.Future[Partitioned]:
            if pool is None:
                return loop.run_in_executor(None, self.decoder.partitioned, start, last, partitions)
            return loop.run_in_executor(pool, decode_range, start, last, partitions)

        ahead = max(1, self.settings.relay_decode_processes)
        size = self.settings.relay_batch_size
        pending: deque[tuple[asyncio.Future[Partitioned], int, int]] = deque()
        recording: asyncio.Future[None] | None = None
        head = dispatched = position
        look = True  # read the head: at start, after a commit, and once a second anyway
        try:
            next_check = time.monotonic() + LOCK_CHECK_SECONDS
            while not stop.is_set():
                if dispatched == head and (look or commits.is_set()):
                    commits.clear()
                    head = max(head, await asyncio.to_thread(self.app.head_position))
                    look = False
                while len(pending) < ahead and dispatched < head:
                    last = min(head, dispatched + size)
                    partitions = await self.partition_count(producer)
                    pending.append((encode(dispatched + 1, last, partitions), last, partitions))
                    dispatched = last
                if pending:
                    future, last, partitions = pending.popleft()
                    messages = await future
                    if messages:
                        await self.publish(producer, messages, partitions, stop)
                    # Recorded in order, the next range being sent meanwhile: a crash
                    # before a record commits only means re-sending that range.
                    if recording is not None:
                        await recording
                    recording = asyncio.ensure_future(asyncio.to_thread(self._record, last))
                elif dispatched == head:
                    look = not await commits.wait(1.0)
                if time.monotonic() >= next_check:
                    if not await asyncio.to_thread(lock.is_held):
                        raise LostLeadership("the advisory lock's connection was lost")
                    next_check = time.monotonic() + LOCK_CHECK_SECONDS
        finally:
            for future, _, _ in pending:
                future.cancel()
            if recording is not None:  # let the last record land (or fail: we re-send)
                with contextlib.suppress(Exception):
                    await recording
            await asyncio.to_thread(commits.close)
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _decoder_pool(self) -> ProcessPoolExecutor | None:
        processes = self.settings.relay_decode_processes
        if processes == 0:
            return None
        return ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded process
            initializer=start_decoder,
            initargs=(dict(self.app.env), os.getpid()),
        )

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
            size = self.settings.relay_batch_size
            for start in range(max(1, from_position), last + 1, size):
                if stop.is_set():
                    break
                stop_at = min(last, start + size - 1)
                partitions = await self.partition_count(producer)
                messages = await asyncio.to_thread(
                    self.decoder.partitioned, start, stop_at, partitions
                )
                sent += await self.publish(producer, messages, partitions, stop)
        finally:
            await producer.stop()
        return sent


async def _bridge(stop: asyncio.Event, halt: threading.Event) -> None:
    await stop.wait()
    halt.set()
