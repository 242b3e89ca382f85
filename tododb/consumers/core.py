"""The shared consumer core: a Kafka consumer group with an inbox, retries, a DLQ and
per-key parking.

Guarantees, per message: its effects and its inbox row commit in one PostgreSQL
transaction, so a redelivery (the relay re-sends, a crash before the offset commit,
a rebalance) finds the inbox row and has no second effect. Offsets are committed only
after handling. A handler that keeps failing is retried with exponential backoff a
bounded number of times, then the message goes to ``<topic>.<group>.dlq`` with headers
saying why and where from, and its key (the todo id, or a list's) is *parked*
(``consumers.parking``): the todo's later messages wait behind it, in order, until an
operator retries or skips it, while other todos flow on. The group membership
(``consumers.group``) bounds every broker call and re-joins when the group breaks, so a
consumer never wedges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from psycopg.sql import SQL, Identifier
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tododb.consumers.ddl import apply_ddl, parked_ddl
from tododb.consumers.group import GroupBroken, GroupMember
from tododb.consumers.parking import (
    HANDLED,
    SKIPPED,
    ParkedMessage,
    ParkedStore,
    ParkingLot,
    Release,
    describe,
    record_key,
)
from tododb.contract import BadEnvelope, TodoEvent, parse_message
from tododb.infra import tracing
from tododb.infra.kafka import bootstrap_servers, make_producer, start_producer
from tododb.infra.postgres import RECONNECT_SECONDS
from tododb.infra.retry import Backoff, Stopped, retry_async, sleep_or_stop
from tododb.infra.settings import Settings

log = logging.getLogger(__name__)

AsyncConn = psycopg.AsyncConnection[Any]

DLQ_ERROR = "dlq-error"
DLQ_ATTEMPTS = "dlq-attempts"
DLQ_ORIGIN_TOPIC = "dlq-origin-topic"
DLQ_ORIGIN_PARTITION = "dlq-origin-partition"
DLQ_ORIGIN_OFFSET = "dlq-origin-offset"
DLQ_GROUP = "dlq-group"
DLQ_HEADERS = (
    DLQ_ERROR,
    DLQ_ATTEMPTS,
    DLQ_ORIGIN_TOPIC,
    DLQ_ORIGIN_PARTITION,
    DLQ_ORIGIN_OFFSET,
    DLQ_GROUP,
)
INFRASTRUCTURE_ERRORS = (psycopg.OperationalError, PoolTimeout)
"""Database outages: retried until they pass, never counted against the message."""
OUTAGE_BACKOFF = Backoff(0.5, 2.0)
"""Waiting out a database or broker that is down."""


class Handler(Protocol):
    name: str
    """Consumer group name and PostgreSQL schema."""

    def ddl(self) -> Sequence[str]:
        """Statements creating the schema and tables (``IF NOT EXISTS``)."""
        ...

    async def handle(self, conn: AsyncConn, event: TodoEvent) -> None:
        """Apply the event inside the open transaction on ``conn``."""
        ...


def dlq_topic(topic: str, group: str) -> str:
    return f"{topic}.{group}.dlq"


@dataclass
class Counters:
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retries: int = 0
    parked: int = 0
    """Messages this process parked (heads and those behind them)."""


class ConsumerService:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        handler: Handler,
        *,
        group_id: str | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.handler = handler
        self.topic = settings.kafka_topic
        self.group_id = group_id or handler.name
        self.dlq = dlq_topic(self.topic, self.group_id)
        self.counters = Counters()
        self.pool = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=4,
            open=False,
            kwargs={"autocommit": True},
            timeout=settings.db_connect_timeout,
            reconnect_timeout=RECONNECT_SECONDS,  # then reconnect on demand, not on a backoff
        )
        self.parking = ParkingLot(self.pool, ParkedStore(handler.name, self.group_id))
        self.member = GroupMember(settings, handler.name, self.topic, self.group_id)
        self._after_commit = after_commit
        self._inbox_insert = SQL(
            "INSERT INTO {}.inbox (event_id, type, sequence) VALUES (%s, %s, %s) "
            "ON CONFLICT (event_id) DO NOTHING"
        ).format(Identifier(handler.name))

    # ---- lifecycle ------------------------------------------------------------------

    async def prepare(self, stop: asyncio.Event) -> None:
        """Create the schema and open the pool, waiting out a database that is down."""
        with contextlib.suppress(Stopped):
            await retry_async(
                self.open,
                stop=stop,
                backoff=OUTAGE_BACKOFF,
                what=f"{self.name}: reaching the database",
                retry_on=INFRASTRUCTURE_ERRORS,
            )

    async def open(self) -> None:
        """Create the schema, open the pool and load the parked keys, once (commands
        such as ``todo consumer retry`` use this: they should fail, not wait)."""
        await asyncio.to_thread(self._create_schema)
        await self.pool.open(wait=True, timeout=self.settings.db_connect_timeout)
        await self.parking.reload()

    def _create_schema(self) -> None:
        with psycopg.connect(
            self.database_url, autocommit=True, connect_timeout=self.settings.db_connect_timeout
        ) as conn:
            apply_ddl(conn, self.handler.name, [*self.handler.ddl(), *parked_ddl(self.name)])

    @property
    def name(self) -> str:
        return self.handler.name

    def parked_count(self) -> int:
        """Keys parked in this group (a gauge: as fresh as the in-memory set)."""
        return len(self.parking.keys)

    async def close(self) -> None:
        await self.pool.close()

    async def run(self, stop: asyncio.Event) -> None:
        await self.prepare(stop)
        if stop.is_set():
            return
        producer = make_producer(self.settings)
        try:
            await self.member.join(stop)
            await retry_async(
                lambda: asyncio.wait_for(
                    start_producer(producer, self.settings), self.member.timeout
                ),
                stop=stop,
                backoff=OUTAGE_BACKOFF,
                what=f"{self.name}: starting the DLQ producer",
            )
            log.info("%s: consuming %s as group %s", self.name, self.topic, self.group_id)
            await self._loop(producer, stop)
        except Stopped:
            pass
        finally:
            await self.member.leave()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), self.member.timeout)

    async def _loop(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._poll(producer, stop)
            except GroupBroken as e:
                await self.member.rejoin(stop, e)

    async def _poll(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        """Fetch, handle and commit one round (one offset commit for every partition)."""
        batches, generation = await self.member.fetch(stop)
        await self._refresh_parked(stop)
        handled: dict[TopicPartition, int] = {}
        for tp, records in batches.items():
            if not await self._process_records(records, producer, stop):
                break  # stopped: the rest is uncommitted, redelivered to the next owner
            handled[tp] = records[-1].offset + 1
        if handled:
            await self.member.commit(handled, generation)

    async def _refresh_parked(self, stop: asyncio.Event) -> None:
        """Re-read the parked keys after an assignment (they must be known before any
        message is handled) and every few seconds (keys released by an operator)."""
        if self.member.assigned.is_set():
            self.member.assigned.clear()
            self.parking.invalidate()
        if self.parking.stale:
            await retry_async(
                self.parking.reload,
                stop=stop,
                backoff=OUTAGE_BACKOFF,
                what=f"{self.name}: loading parked keys",
                retry_on=INFRASTRUCTURE_ERRORS,
            )
        elif self.parking.due():
            try:
                await self.parking.reload()
            except INFRASTRUCTURE_ERRORS as e:
                log.warning("%s: could not refresh the parked keys: %r", self.name, e)

    # ---- messages -------------------------------------------------------------------

    async def _process_records(
        self,
        records: list[ConsumerRecord[bytes, bytes]],
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> bool:
        """One transaction for a whole fetched batch (one commit, not one per event),
        except messages of parked keys, which are parked behind their key; if anything
        in the batch fails, it is redone message by message."""
        if len(records) > 1:
            try:
                events = [parse_message(r.value, r.key, r.headers) for r in records]
                held = [r for r, e in zip(records, events, strict=True) if self._held(e)]
                await self._handle_many([e for e in events if not self._held(e)])
                records = held
            except Exception as e:
                log.info("%s: batch of %d failed (%r); one by one", self.name, len(records), e)
        for record in records:
            if stop.is_set() or not await self.process(record, producer, stop):
                return False
        return True

    def _held(self, event: TodoEvent) -> bool:
        return self.parking.holds(event.todo_id)

    async def _handle_many(self, events: list[TodoEvent]) -> None:
        if not events:
            return
        handled = 0
        async with self.pool.connection() as conn, conn.transaction():
            for event in events:
                handled += await self._apply(conn, event)
        self.counters.handled += handled
        self.counters.duplicates += len(events) - handled
        if handled and self._after_commit is not None:
            self._after_commit()

    async def _apply(self, conn: AsyncConn, event: TodoEvent) -> bool:
        """Record the event in the inbox and apply it, in the caller's transaction;
        False (and no effect) for an event the inbox already has."""
        cur = await conn.execute(self._inbox_insert, (event.id, event.type, event.sequence))
        if cur.rowcount == 0:
            return False
        await self.handler.handle(conn, event)
        return True

    async def process(
        self, record: ConsumerRecord[bytes, bytes], producer: AIOKafkaProducer, stop: asyncio.Event
    ) -> bool:
        """Handle, park or dead-letter the message; False only if stopped before any."""
        try:
            return await self._process(record, producer, stop)
        except Stopped:
            return False

    async def _process(
        self, record: ConsumerRecord[bytes, bytes], producer: AIOKafkaProducer, stop: asyncio.Event
    ) -> bool:
        try:
            event = parse_message(record.value, record.key, record.headers)
        except BadEnvelope as e:
            return await self._bad_envelope(record, e, producer, stop)
        with tracing.handling(event):  # its log lines carry the event's correlation id
            if self._held(event) and await self._park_behind(record, event.todo_id, event.id, stop):
                return True
            error, attempts = await self._handle_with_retries(event, stop)
            if error is None:
                return True
            return await self._fail(
                record, event.todo_id, event.id, error, attempts, producer, stop
            )

    async def _bad_envelope(
        self,
        record: ConsumerRecord[bytes, bytes],
        error: BadEnvelope,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> bool:
        """Retrying cannot fix the bytes of a message: straight to the DLQ (unless its
        key, the only todo id it has, is parked: then behind it)."""
        key = record_key(record)
        if key is not None and self.parking.holds(key):
            parked = await self._park_behind(record, key, None, stop)
            if parked:
                return True
        log.error("%s: bad message at %s/%s: %s", self.name, record.partition, record.offset, error)
        return await self._fail(record, key, None, error, 1, producer, stop)

    async def _handle_with_retries(
        self, event: TodoEvent, stop: asyncio.Event
    ) -> tuple[Exception | None, int]:
        """Handle the event; the last error and the attempts once they are used up."""
        attempt = 0
        while True:
            try:
                await self._handle_once(event)
                return None, attempt + 1
            except INFRASTRUCTURE_ERRORS as e:  # not the message's fault: not an attempt
                log.warning("%s: database unavailable: %r", self.name, e)
                delay = OUTAGE_BACKOFF.delay(2)
            except Exception as e:
                attempt += 1
                if attempt >= self.settings.consumer_max_attempts:
                    log.error(
                        "%s: event %s of todo %s failed %d times; dead-lettering and "
                        "parking the todo: %r",
                        *(self.name, event.id, event.todo_id, attempt, e),
                    )
                    return e, attempt
                delay = self._retry_delay(event, attempt, e)
            if await sleep_or_stop(stop, delay):
                raise Stopped(f"{self.name}: handling {event.id}")

    def _retry_delay(self, event: TodoEvent, attempt: int, error: Exception) -> float:
        self.counters.retries += 1
        delay = Backoff(self.settings.consumer_backoff_seconds, 30.0).delay(attempt)
        log.warning(
            "%s: event %s failed (attempt %d): %r; retrying in %.2fs",
            *(self.name, event.id, attempt, error, delay),
        )
        return delay

    async def _handle_once(self, event: TodoEvent) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            handled = await self._apply(conn, event)
        if not handled:
            self.counters.duplicates += 1
            return
        self.counters.handled += 1
        if self._after_commit is not None:
            self._after_commit()

    # ---- failures: the DLQ and parking ------------------------------------------------

    async def _fail(
        self,
        record: ConsumerRecord[bytes, bytes],
        key: str | None,
        event_id: str | None,
        error: BaseException,
        attempts: int,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> bool:
        """Dead-letter the message, then park its key behind it (a keyless message has
        no todo to hold back: it is only dead-lettered)."""
        if not await self.dead_letter(record, error, attempts, producer, stop):
            return False
        if key is not None:
            await self._outlasting_outages(
                lambda: self.parking.park_head(record, key, event_id, describe(error), attempts),
                stop,
                "parking",
            )
            self.counters.parked += 1
            log.error("%s: todo %s parked behind %s", self.name, key, _where(record))
        return True

    async def _park_behind(
        self,
        record: ConsumerRecord[bytes, bytes],
        key: str,
        event_id: str | None,
        stop: asyncio.Event,
    ) -> bool:
        """Append the message behind its parked key; False if the key was released."""
        parked: bool = await self._outlasting_outages(
            lambda: self.parking.park_behind(record, key, event_id), stop, "parking"
        )
        if parked:
            self.counters.parked += 1
            log.info("%s: %s parked behind todo %s", self.name, _where(record), key)
        return parked

    async def _outlasting_outages(
        self, operation: Callable[[], Any], stop: asyncio.Event, what: str
    ) -> Any:
        return await retry_async(
            operation,
            stop=stop,
            backoff=OUTAGE_BACKOFF,
            what=f"{self.name}: {what}",
            retry_on=INFRASTRUCTURE_ERRORS,
        )

    async def dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        error: BaseException,
        attempts: int,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> bool:
        """Publish to the DLQ, retrying until the broker takes it (else no offset commit)."""
        headers = self._dlq_headers(record, error, attempts)
        try:
            await retry_async(
                lambda: asyncio.wait_for(
                    producer.send_and_wait(self.dlq, record.value, key=record.key, headers=headers),
                    self.member.timeout,
                ),
                stop=stop,
                backoff=OUTAGE_BACKOFF,
                what=f"{self.name}: DLQ publish",
                retry_on=(KafkaError, TimeoutError),
            )
        except Stopped:
            return False
        self.counters.dead_lettered += 1
        return True

    def _dlq_headers(
        self, record: ConsumerRecord[bytes, bytes], error: BaseException, attempts: int
    ) -> list[tuple[str, bytes]]:
        """The message's own headers, plus why and where from (replacing earlier ones)."""
        own = [(k, v) for k, v in (record.headers or ()) if k not in DLQ_HEADERS]
        return [
            *own,
            (DLQ_ERROR, describe(error).encode()),
            (DLQ_ATTEMPTS, str(attempts).encode()),
            (DLQ_ORIGIN_TOPIC, record.topic.encode()),
            (DLQ_ORIGIN_PARTITION, str(record.partition).encode()),
            (DLQ_ORIGIN_OFFSET, str(record.offset).encode()),
            (DLQ_GROUP, self.group_id.encode()),
        ]

    # ---- operators: retry and skip parked keys ----------------------------------------

    async def retry_parked(self, key: str) -> Release:
        """Re-handle the key's parked messages in order, each through the handler and the
        inbox in one transaction with its row's new status; the key is released when none
        is left. A failure keeps the key parked at that message, with the new error."""
        release = Release(key)
        while await self._retry_head(release):
            pass
        if release.released:
            self.parking.keys.discard(key)
        release.remaining = sum(m.status == "parked" for m in await self.parking.messages(key))
        return release

    async def skip_parked(self, key: str) -> Release:
        """Give up on the key's head (kept as 'skipped'), then retry the rest in order."""
        async with self.pool.connection() as conn, conn.transaction():
            await self.parking.store.lock(conn, key)
            head = await self.parking.store.head(conn, key)
            if head is not None:
                await self.parking.store.resolve(conn, head.id, SKIPPED)
                log.warning("%s: skipped %s of todo %s", self.name, _where(head), key)
        release = await self.retry_parked(key)
        release.skipped = int(head is not None)
        return release

    async def _retry_head(self, release: Release) -> bool:
        """Re-handle the key's head; True if there may be more to do."""
        async with self.pool.connection() as conn, conn.transaction():
            await self.parking.store.lock(conn, release.key)
            head = await self.parking.store.head(conn, release.key)
            if head is None:
                release.released = True
                return False
            error = await self._rehandle(conn, head)
            if error is not None:
                await self.parking.store.failed(conn, head.id, describe(error))
                release.error = describe(error)
                return False
            await self.parking.store.resolve(conn, head.id, HANDLED)
        release.handled += 1
        if self._after_commit is not None:
            self._after_commit()
        return True

    async def _rehandle(self, conn: AsyncConn, message: ParkedMessage) -> Exception | None:
        """Handle a parked message as it first came, in a savepoint (so a failure leaves
        the transaction usable to record it); the error, if any."""
        try:
            async with conn.transaction():
                event = parse_message(message.value, message.kafka_key, message.headers)
                await self._apply(conn, event)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as e:
            log.error("%s: parked %s failed again: %r", self.name, _where(message), e)
            return e
        return None


def _where(message: ConsumerRecord[bytes, bytes] | ParkedMessage) -> str:
    return f"{message.topic}/{message.partition}/{message.offset}"


async def redrive(settings: Settings, group: str, *, wait_seconds: float = 30.0) -> int:
    """Re-publish the group's dead letters to their origin topic; returns how many.

    Reads the DLQ up to its end as of now, under group ``<group>.redrive`` with
    committed offsets, so a second run does not re-publish the same letters.
    """
    dlq = dlq_topic(settings.kafka_topic, group)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings),
        group_id=f"{group}.redrive",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = make_producer(settings)
    await consumer.start()
    await start_producer(producer, settings)
    moved = 0
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(dlq) or set()
        tps = [TopicPartition(dlq, p) for p in sorted(partitions)]
        if not tps:
            return 0
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        deadline = time.monotonic() + wait_seconds
        while not await _reached(consumer, end):
            if time.monotonic() > deadline:
                raise TimeoutError(f"redrive of {dlq} did not reach the end in {wait_seconds}s")
            batches = await consumer.getmany(*tps, timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    headers = dict(record.headers or ())
                    origin = headers.get(DLQ_ORIGIN_TOPIC, settings.kafka_topic.encode()).decode()
                    kept = [(k, v) for k, v in (record.headers or ()) if k not in DLQ_HEADERS]
                    await producer.send_and_wait(origin, record.value, key=record.key, headers=kept)
                    moved += 1
                await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await consumer.stop()
        await producer.stop()
    return moved


async def _reached(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return False
    return True
