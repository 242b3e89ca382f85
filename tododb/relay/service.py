"""Follow the global event log and publish each event to Kafka, at least once.

The event store is the outbox: an event is committed once, in PostgreSQL, and this
process publishes it eventually. The position lives in PostgreSQL too (the library's
tracking recorder, table ``relay_tracking``) and moves only after the broker
acknowledged a whole batch, so a crash at any point re-sends, never skips.

Two things must not stop it or fool it: an event that cannot be published is
quarantined, its todo's later events held behind it (``quarantine``), and a broker that
lost what it acknowledged is noticed and, if so configured, given the log again (``loss``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from psycopg.sql import SQL, Identifier

from tododb.application import TodoApplication
from tododb.eventstore import AppendOnlyApplicationRecorder
from tododb.infra import tracing
from tododb.infra.kafka import (
    IdempotenceRefused,
    bootstrap_servers,
    create_topic,
    end_offsets,
    make_producer,
    start_producer,
)
from tododb.infra.leadership import AdvisoryLock
from tododb.infra.retry import Backoff, Stopped, retry_async, sleep_or_stop
from tododb.infra.settings import Settings
from tododb.relay.decoding import Envelopes, Partitioned, decode_range, start_decoder
from tododb.relay.envelope import Failure, OutgoingMessage
from tododb.relay.head import CommitSignal
from tododb.relay.loss import AckedOffsets, Shortfall, describe
from tododb.relay.pipeline import Encode, Pipeline, Range
from tododb.relay.quarantine import RETRY, Quarantine, QuarantineStore, Resolution
from tododb.relay.status import LOCK_NAME

log = logging.getLogger(__name__)

APPLICATION_NAME = TodoApplication.name
"""The upstream application whose log is followed (its events table is ``todos_events``)."""
TRACKING_ENV_NAME = "relay"
"""Environment name of the tracking recorder: its table is ``relay_tracking``."""
LOCK_CHECK_SECONDS = 2.0
"""How often the active relay checks its lock and looks for retry/skip requests."""
STANDING_BY = (True, "not contacted (standing by)")
"""A relay's broker state while it is not the active relay: only that one uses it."""
BROKER_ERRORS = (KafkaError, TimeoutError, OSError, IdempotenceRefused)
"""What an exchange with the broker fails with when the broker is the trouble."""


class LostLeadership(Exception):
    """Another relay became active (our lock connection died): stop publishing."""


class NothingQuarantined(LookupError):
    """A retry or skip was asked for a todo with no quarantined event."""


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
        self.data_loss_detected = 0
        """Times the broker was found to have lost records it had acknowledged."""
        self.broker: tuple[bool, str] = STANDING_BY
        """How the last exchange with the broker went (a start, a send, a look at the
        topic's end offsets, which an idle relay makes every loss check): readiness."""
        self.quarantine = Quarantine()
        self.store = QuarantineStore.on(self.recorder)
        self.acks = AckedOffsets()
        self._rewind = False
        self._next_lock_check = self._next_loss_check = 0.0

    @property
    def exchange_timeout(self) -> float:
        """The longest one exchange with the broker may take: two request timeouts
        (a retried request) and a margin."""
        return self.settings.kafka_request_timeout_ms / 1000 * 2 + 5

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

    def _record(self, position: int) -> None:
        try:
            self.tracking.insert_tracking(Tracking(APPLICATION_NAME, position))
        except IntegrityError:
            # Single-row tracking refuses to move backwards: someone else advanced it.
            raise LostLeadership(
                f"position {position} was already recorded by another relay"
            ) from None

    def _reset_position(self) -> None:
        """Back to 0, for a re-publish: recorded again range by range as it goes, so a
        relay that stops half-way carries on from there. Only the lock holder calls it."""
        table = Identifier(self.tracking.datastore.schema, self.tracking.tracking_table_name)
        with self.tracking.datastore.transaction(commit=True) as cur:
            cur.execute(
                SQL("UPDATE {} SET notification_id = 0 WHERE application_name = %s").format(table),
                (APPLICATION_NAME,),
            )

    def _load_quarantine(self) -> None:
        self.store.create()
        self.quarantine.load(*self.store.load())

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
        sent: list[tuple[asyncio.Future[Any], int]] = []
        for partition, batch_messages in messages.items():
            sent += await self._send_partition(producer, partition, batch_messages)
        results = await asyncio.gather(*(future for future, _ in sent), return_exceptions=True)
        self._note_acks([(p, r) for (_, p), r in zip(sent, results, strict=True)])
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return sum(map(len, messages.values()))

    async def _send_partition(
        self, producer: AIOKafkaProducer, partition: int, messages: list[OutgoingMessage]
    ) -> list[tuple[asyncio.Future[Any], int]]:
        """One partition's messages in as few batches as fit: (future, partition) each."""
        sent = []
        batch = producer.create_batch()
        for m in messages:
            while batch.append(key=m.key, value=m.value, timestamp=None, headers=m.headers) is None:
                if not batch.record_count():
                    raise ValueError(f"message {m.event_id} is larger than a whole batch")
                future = await producer.send_batch(batch, self.topic, partition=partition)
                sent.append((future, partition))
                batch = producer.create_batch()
        if batch.record_count():
            future = await producer.send_batch(batch, self.topic, partition=partition)
            sent.append((future, partition))
        return sent

    def _note_acks(self, acks: list[tuple[int, Any]]) -> None:
        """Remember where each partition's acks are; one that went back is a loss."""
        backwards: list[Shortfall] = []
        for partition, result in acks:
            if not isinstance(result, BaseException):
                shortfall = self.acks.acked(partition, result.offset)
                if shortfall is not None:
                    backwards.append(shortfall)
        if backwards:
            self._on_loss(f"offsets went backwards ({describe(backwards)})")

    async def publish(
        self,
        producer: AIOKafkaProducer,
        messages: Partitioned,
        partitions: int,
        stop: asyncio.Event,
        *,
        rewind_on_loss: bool = False,
    ) -> int:
        """Send until acknowledged; on failure back off and re-send the same messages.

        Re-sent messages keep their CloudEvent ids, so consumers dedupe them. Before a
        re-send the topic is compared with the acks: with ``rewind_on_loss``, a broker
        that lost them gets nothing newer (returns 0, the caller re-publishes the log).
        """
        attempts = 0

        async def attempt() -> int:
            nonlocal attempts
            attempts += 1
            return await self._attempt(producer, messages, partitions, attempts > 1, rewind_on_loss)

        what = f"publishing {sum(map(len, messages.values()))} messages"
        started = time.time_ns()
        sent = await retry_async(attempt, stop=stop, backoff=self._backoff(0.2), what=what)
        self.published += sent
        if sent and tracing.exporting():
            tracing.publish_spans(
                [m.traceparent for ms in messages.values() for m in ms], self.topic, started
            )
        if attempts > 1 and sent:
            log.info("broker is back; re-sent %d messages", sent)
        return sent

    async def _attempt(
        self,
        producer: AIOKafkaProducer,
        messages: Partitioned,
        partitions: int,
        again: bool,
        rewind_on_loss: bool,
    ) -> int:
        """One send. A re-send first makes sure of the topic (a restarted broker may have
        lost it) and compares it with the acks; 0 when it must not go out (see publish)."""
        try:
            if again:
                await self.ensure_topic()
                await self.check_loss("after a failed send")
                if rewind_on_loss and self._rewind:
                    return 0
            sent = await asyncio.wait_for(
                self.send(producer, messages, partitions), self.exchange_timeout
            )
        except Exception as e:
            self.failures += 1
            self._broker_failed("publishing", e)
            raise
        self._broker_answered()
        return sent

    async def start_producer(self, stop: asyncio.Event) -> AIOKafkaProducer:
        async def start() -> AIOKafkaProducer:
            # No linger: the relay hands over whole batches, there is nothing to wait for.
            producer = make_producer(self.settings, linger_ms=0)
            try:
                # bounded: aiokafka retries InitProducerId without end on some errors
                await asyncio.wait_for(
                    start_producer(producer, self.settings), self.exchange_timeout
                )
                await self.ensure_topic()
            except BaseException as e:
                self._broker_failed("starting the producer", e)
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._broker_answered()
            return producer

        return await retry_async(
            start, stop=stop, backoff=self._backoff(0.2), what="starting the producer"
        )

    def _backoff(self, base: float) -> Backoff:
        return Backoff(base, self.settings.relay_backoff_max_seconds)

    # ---- a broker that lost data ----------------------------------------------------

    async def check_loss(self, why: str) -> bool:
        """Whether the topic ends short of what the broker acknowledged (then reported)."""
        ends = await self._end_offsets(why)
        shortfalls = [] if ends is None else self.acks.compare(ends)
        if shortfalls:
            self._on_loss(f"{describe(shortfalls)} ({why})")
        return bool(shortfalls)

    async def _check_start(self, position: int) -> None:
        """A relay that starts with a recorded position over an empty topic: the broker
        lost everything while no relay was there to see it (``todo dev`` restarting)."""
        if position == 0:
            return
        ends = await self._end_offsets("at start")
        if ends is not None and not any(ends.values()):
            self._on_loss(f"the topic is empty but the relay's recorded position is {position}")

    async def _end_offsets(self, why: str) -> dict[int, int] | None:
        try:
            ends = await asyncio.wait_for(
                end_offsets(self.settings, self.topic), self.exchange_timeout
            )
        except Exception as e:  # the broker is away: the publish path reports that
            log.warning("relay: cannot read the end offsets of %s (%s): %r", self.topic, why, e)
            self._broker_failed("reading the topic's end offsets", e)
            return None
        self._broker_answered()
        return ends

    def _broker_answered(self) -> None:
        self.broker = (True, "answered")

    def _broker_failed(self, doing: str, error: BaseException) -> None:
        """Recorded if the broker is what failed (not a cancellation, nor a message the
        relay could not make)."""
        if isinstance(error, BROKER_ERRORS):
            self.broker = (False, f"{doing} failed: {error!r}")

    def _on_loss(self, detail: str) -> None:
        """Say so loudly, count it, and start a new history of acks; maybe re-publish."""
        self.data_loss_detected += 1
        self.acks.reset()
        republish = self.settings.relay_republish_on_loss
        log.error(
            "relay: DATA LOSS: the broker lost records of topic %s it had acknowledged: %s; %s",
            self.topic,
            detail,
            "re-publishing the log from position 1"
            if republish
            else "not re-publishing (TODO_RELAY_REPUBLISH_ON_LOSS is false): consumers miss "
            "those events until `todo relay replay --from 1`",
        )
        self._rewind = self._rewind or republish

    async def _rewind_log(self, flow: Pipeline) -> None:
        """Re-publish from position 1, recording the position again as it goes."""
        await self.ensure_topic()
        await flow.settle()  # a record in flight must not land after the reset
        await asyncio.to_thread(self._reset_position)
        log.warning(
            "relay: re-publishing the log to %s from position 1 (position was %d)",
            self.topic,
            flow.recorded,
        )
        flow.rewind()
        self._rewind = False

    # ---- the loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by for the lock, then relay until ``stop``; back to standby if it is lost."""
        halt = threading.Event()
        bridge = asyncio.create_task(_bridge(stop, halt))
        try:
            while not stop.is_set():
                self.broker = STANDING_BY
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
        self.broker = (False, "starting the producer")  # not ready until the broker answers
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
        """Dispatch position ranges to the decoders; send each range's messages in order
        (``Pipeline``), and between two ranges do the chores: the lock, retry/skip
        requests, the check for a broker that lost data."""
        position = await asyncio.to_thread(self._prepare)
        log.info("relay: following the log from position %d to topic %s", position, self.topic)
        pool = self._decoder_pool()
        commits = CommitSignal(self.recorder)
        flow = Pipeline(
            self._encoder(pool),
            position,
            ahead=max(1, self.settings.relay_decode_processes),
            size=self.settings.relay_batch_size,
        )
        try:
            await self._check_start(position)
            look = True  # read the head: at start, after a commit, and once a second anyway
            while not stop.is_set():
                look = await self._step(producer, stop, flow, commits, look)
                await self._chores(producer, stop, lock)
        finally:
            await flow.close()
            await asyncio.to_thread(commits.close)
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _prepare(self) -> int:
        """The quarantine as it stands, the recorded position, the chores' clocks."""
        self._load_quarantine()
        now = time.monotonic()
        self._next_lock_check = now + LOCK_CHECK_SECONDS
        self._next_loss_check = now + self.settings.relay_loss_check_seconds
        return self.position()

    async def _step(
        self,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
        flow: Pipeline,
        commits: CommitSignal,
        look: bool,
    ) -> bool:
        """One turn: read the head if due, dispatch ahead, send the oldest range, or wait
        for a commit. Returns whether to read the head next time even without one."""
        if self._rewind:
            await self._rewind_log(flow)
        if flow.caught_up() and (look or commits.is_set()):
            commits.clear()
            flow.head = max(flow.head, await asyncio.to_thread(self.app.head_position))
            look = False
        if flow.wants():
            flow.dispatch(await self.partition_count(producer))
        taken = flow.take()
        if taken is not None:
            await self._deliver(producer, stop, flow, taken)
        elif flow.caught_up():
            look = not await commits.wait(1.0)
        return look

    async def _deliver(
        self, producer: AIOKafkaProducer, stop: asyncio.Event, flow: Pipeline, taken: Range
    ) -> None:
        """Send one range (its poison quarantined, held todos' events kept back), record it.

        Not recorded when the broker turned out to have lost data: the log is re-read.
        """
        messages, failures = await taken.future
        if self.quarantine.active(failures):
            messages = await self._hold(messages, failures)
        if messages:
            republish = self.settings.relay_republish_on_loss
            await self.publish(producer, messages, taken.partitions, stop, rewind_on_loss=republish)
        if not self._rewind:
            await flow.record(taken.last, self._record)

    async def _hold(self, messages: Partitioned, failures: list[Failure]) -> Partitioned:
        """Quarantine what failed and keep back held todos' events; write that down first
        (a crash after it finds the same on the next read, nothing twice)."""
        result = self.quarantine.sort(messages, failures)
        if result.has_rows():
            await asyncio.to_thread(self.store.record, result)
        return result.messages

    async def _chores(
        self, producer: AIOKafkaProducer, stop: asyncio.Event, lock: AdvisoryLock
    ) -> None:
        """Between two ranges, on their own clocks: are we still the active relay, did
        someone ask for a retry or skip, does the topic still hold what was acked?"""
        now = time.monotonic()
        if now >= self._next_lock_check:
            if not await asyncio.to_thread(lock.is_held):
                raise LostLeadership("the advisory lock's connection was lost")
            if self.quarantine.held:  # no held todo, no quarantined event, no request
                await self.apply_requests(producer, stop)
            self._next_lock_check = time.monotonic() + LOCK_CHECK_SECONDS
        if now >= self._next_loss_check:
            await self.check_loss("periodic check")
            self._next_loss_check = time.monotonic() + self.settings.relay_loss_check_seconds

    def _encoder(self, pool: ProcessPoolExecutor | None) -> Encode:
        """Ranges go to the decoder processes, or to a thread of this process without any."""
        loop = asyncio.get_running_loop()

        def encode(first: int, last: int, partitions: int) -> asyncio.Future[Any]:
            if pool is None:
                return loop.run_in_executor(None, self.decoder.decode, first, last, partitions)
            return loop.run_in_executor(pool, decode_range, first, last, partitions)

        return encode

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

    # ---- retry and skip -------------------------------------------------------------

    async def apply_requests(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        """Carry out the retry/skip requests ``todo relay retry|skip`` left in the table.

        Done by the active relay between two ranges: the todo's held events go out
        before any newer event of it, which the next ranges then send.
        """
        for todo_id, action in await asyncio.to_thread(self.store.requests):
            await self._resolve(producer, stop, todo_id, action)

    async def _resolve(
        self, producer: AIOKafkaProducer, stop: asyncio.Event, todo_id: str, action: str
    ) -> Resolution:
        """Encode the todo's open events again (without its head for a skip) and publish
        them in order up to the first that still fails, which becomes its new head."""
        opened = await asyncio.to_thread(self.store.opened, todo_id)
        if not opened:
            outcome = Resolution(todo_id, action, [], None, None)
        else:
            tried = opened if action == RETRY else opened[1:]
            messages, failures = await asyncio.to_thread(self._reencode, tried)
            outcome = Resolution.of(todo_id, action, opened, failures[0] if failures else None)
            await self._publish_released(producer, stop, messages, set(outcome.released))
        await asyncio.to_thread(self.store.resolve, outcome)
        self.quarantine.settle(outcome)
        log.info(
            "relay: %s of todo %s: released %s, skipped %s, still quarantined %s",
            action,
            todo_id,
            outcome.released,
            outcome.skipped,
            outcome.stuck and outcome.stuck.position,
        )
        return outcome

    def _reencode(self, positions: list[int]) -> tuple[list[OutgoingMessage], list[Failure]]:
        if not positions:
            return [], []
        return self.decoder.convert(self.recorder.select_positions(positions))

    async def _publish_released(
        self,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
        messages: list[OutgoingMessage],
        released: set[int],
    ) -> None:
        """Publish what a retry or skip released, in log order (one key, one partition)."""
        ready = [m for m in messages if m.position in released]
        if ready:
            partitions = await self.partition_count(producer)
            await self.publish(producer, self.decoder.group(ready, partitions), partitions, stop)

    async def request(self, todo_id: UUID, action: str, *, wait: float = 60.0) -> dict[str, Any]:
        """Ask for a retry or skip of the todo's quarantined events (``todo relay``).

        The active relay applies it between two ranges, so the todo's events stay in
        order; with no relay running, this process takes the relay's lock and applies it
        itself. Waits up to ``wait`` seconds; a request not applied by then stays, for
        the next relay. Raises ``NothingQuarantined``.
        """
        await asyncio.to_thread(self.store.create)
        if not await asyncio.to_thread(self.store.request, todo_id, action):
            raise NothingQuarantined(f"todo {todo_id} has no quarantined event")
        lock = AdvisoryLock(self.database_url, LOCK_NAME)
        if await asyncio.to_thread(lock.try_acquire):
            try:
                applied = await self._apply_alone(wait)
            finally:
                await asyncio.to_thread(lock.release)
        else:
            applied = await self._await_request(todo_id, wait)
        rows = await asyncio.to_thread(self.store.rows, todo_id, everything=True)
        return {"todo_id": str(todo_id), "action": action, "applied": applied, "events": rows}

    async def _apply_alone(self, wait: float) -> bool:
        """Under the relay's lock (no relay runs): apply the requests with a producer of
        our own; False if the broker did not take them within ``wait`` seconds."""
        stop = asyncio.Event()
        timer = asyncio.get_running_loop().call_later(wait, stop.set)
        try:
            await asyncio.to_thread(self._load_quarantine)
            producer = await self.start_producer(stop)
            try:
                await self.apply_requests(producer, stop)
            finally:
                await producer.stop()
            return True
        except Stopped:
            return False
        finally:
            timer.cancel()

    async def _await_request(self, todo_id: UUID, wait: float) -> bool:
        """Until the active relay cleared the todo's request (True) or ``wait`` is over."""
        deadline = time.monotonic() + wait
        while await asyncio.to_thread(self.store.pending, todo_id):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    # ---- replay ---------------------------------------------------------------------

    async def replay(
        self, from_position: int, to_position: int | None = None, stop: asyncio.Event | None = None
    ) -> int:
        """Re-publish positions ``from_position``..``to_position`` (default: the head now).

        For a new downstream system; the relay's own position is not touched, and the
        re-sent events keep their ids, so existing consumers ignore them. Quarantined
        events, and held ones, are left out as the relay leaves them out.
        """
        stop = stop or asyncio.Event()
        last = to_position if to_position is not None else self.app.head_position()
        await asyncio.to_thread(self._load_quarantine)
        producer = await self.start_producer(stop)
        sent = 0
        try:
            size = self.settings.relay_batch_size
            for start in range(max(1, from_position), last + 1, size):
                if stop.is_set():
                    break
                sent += await self._replay_range(producer, stop, start, min(last, start + size - 1))
        finally:
            await producer.stop()
        return sent

    async def _replay_range(
        self, producer: AIOKafkaProducer, stop: asyncio.Event, start: int, last: int
    ) -> int:
        partitions = await self.partition_count(producer)
        messages, failures = await asyncio.to_thread(self.decoder.decode, start, last, partitions)
        if self.quarantine.active(failures):
            messages = self.quarantine.sort(messages, failures).messages
        return await self.publish(producer, messages, partitions, stop) if messages else 0


async def _bridge(stop: asyncio.Event, halt: threading.Event) -> None:
    await stop.wait()
    halt.set()
