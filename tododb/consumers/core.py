"""The shared consumer core: a Kafka consumer group with an inbox, retries and a DLQ.

Guarantees, per message: its effects and its inbox row commit in one PostgreSQL
transaction, so a redelivery (the relay re-sends, a crash before the offset commit,
a rebalance) finds the inbox row and has no second effect. Offsets are committed only
after handling. A handler that keeps failing is retried with exponential backoff a
bounded number of times, then the message goes to ``<topic>.<group>.dlq`` with headers
saying why and where from, and the group carries on with the next message.
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

from tododb.consumers.ddl import apply_ddl
from tododb.contract import BadEnvelope, TodoEvent, parse_message
from tododb.infra.kafka import (
    bootstrap_servers,
    create_topic,
    make_consumer,
    make_producer,
)
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
OUTAGE_BACKOFF = Backoff(0.5, 10.0)
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
            database_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
        )
        self._after_commit = after_commit
        self._inbox_insert = SQL(
            "INSERT INTO {}.inbox (event_id, type, sequence) VALUES (%s, %s, %s) "
            "ON CONFLICT (event_id) DO NOTHING"
        ).format(Identifier(handler.name))

    # ---- lifecycle ------------------------------------------------------------------

    async def prepare(self, stop: asyncio.Event) -> None:
        """Create the schema and open the pool, waiting out a database that is down."""

        async def prepare_once() -> None:
            await asyncio.to_thread(self._create_schema)
            await self.pool.open(wait=True, timeout=self.settings.db_connect_timeout)

        with contextlib.suppress(Stopped):
            await retry_async(
                prepare_once,
                stop=stop,
                backoff=OUTAGE_BACKOFF,
                what=f"{self.name}: reaching the database",
                retry_on=INFRASTRUCTURE_ERRORS,
            )

    def _create_schema(self) -> None:
        with psycopg.connect(
            self.database_url, autocommit=True, connect_timeout=self.settings.db_connect_timeout
        ) as conn:
            apply_ddl(conn, self.handler.name, self.handler.ddl())

    @property
    def name(self) -> str:
        return self.handler.name

    async def close(self) -> None:
        await self.pool.close()

    async def run(self, stop: asyncio.Event) -> None:
        await self.prepare(stop)
        if stop.is_set():
            return
        consumer = make_consumer(self.settings, self.topic, group_id=self.group_id)
        producer = make_producer(self.settings)
        try:
            # Create the topic with the configured partitions before subscribing: a
            # subscription to a missing topic would auto-create it with the broker default.
            for start, what in (
                (self._ensure_topic, "topic"),
                (consumer.start, "consumer"),
                (producer.start, "DLQ producer"),
            ):
                await retry_async(
                    start, stop=stop, backoff=OUTAGE_BACKOFF, what=f"{self.name}: starting {what}"
                )
            log.info("%s: consuming %s as group %s", self.name, self.topic, self.group_id)
            await self._loop(consumer, producer, stop)
        except Stopped:
            pass
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _ensure_topic(self) -> None:
        await create_topic(
            bootstrap_servers(self.settings), self.topic, self.settings.kafka_topic_partitions
        )

    async def _loop(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, stop: asyncio.Event
    ) -> None:
        failures = 0
        while not stop.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=200)
                failures = 0
            except KafkaError as e:
                failures += 1
                delay = OUTAGE_BACKOFF.delay(failures)
                log.warning("%s: fetch failed: %r; retrying in %.1fs", self.name, e, delay)
                await sleep_or_stop(stop, delay)
                continue
            handled: dict[TopicPartition, int] = {}
            for tp, records in batches.items():
                if not await self._process_records(records, producer, stop):
                    break  # stopped: the rest is uncommitted, redelivered to the next owner
                handled[tp] = records[-1].offset + 1
            if handled:
                await self._commit(consumer, handled)  # one request for every partition
            if stop.is_set():
                return

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except KafkaError as e:
            # A rebalance took a partition away: its next owner re-reads from the last
            # committed offset and the inbox drops what was already handled.
            log.warning("%s: offset commit for %s failed: %r", self.name, list(offsets), e)

    # ---- messages -------------------------------------------------------------------

    async def _process_records(
        self,
        records: list[ConsumerRecord[bytes, bytes]],
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> bool:
        """One transaction for a whole fetched batch (one commit, not one per event);
        if anything in it fails, the batch is redone message by message."""
        if len(records) > 1:
            try:
                events = [parse_message(r.value, r.key, r.headers) for r in records]
                await self._handle_many(events)
                return True
            except Exception as e:
                log.info("%s: batch of %d failed (%r); one by one", self.name, len(records), e)
        for record in records:
            if stop.is_set() or not await self.process(record, producer, stop):
                return False
        return True

    async def _handle_many(self, events: list[TodoEvent]) -> None:
        handled = duplicates = 0
        async with self.pool.connection() as conn, conn.transaction():
            for event in events:
                cur = await conn.execute(self._inbox_insert, (event.id, event.type, event.sequence))
                if cur.rowcount == 0:
                    duplicates += 1
                    continue
                await self.handler.handle(conn, event)
                handled += 1
        self.counters.handled += handled
        self.counters.duplicates += duplicates
        if handled and self._after_commit is not None:
            self._after_commit()

    async def process(
        self, record: ConsumerRecord[bytes, bytes], producer: AIOKafkaProducer, stop: asyncio.Event
    ) -> bool:
        """Handle or dead-letter the message; False only if stopped before either."""
        try:
            event = parse_message(record.value, record.key, record.headers)
        except BadEnvelope as e:
            # Retrying cannot fix the bytes of a message: straight to the DLQ.
            log.error("%s: bad message at %s/%s: %s", self.name, record.partition, record.offset, e)
            return await self.dead_letter(record, e, 1, producer, stop)
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:
                await self._handle_once(event)
                return True
            except INFRASTRUCTURE_ERRORS as e:
                attempt -= 1  # not the message's fault
                log.warning("%s: database unavailable: %r", self.name, e)
                await sleep_or_stop(stop, OUTAGE_BACKOFF.delay(2))
            except Exception as e:
                if attempt >= self.settings.consumer_max_attempts:
                    log.error(
                        "%s: event %s failed %d times; dead-lettering: %r",
                        self.name,
                        event.id,
                        attempt,
                        e,
                    )
                    return await self.dead_letter(record, e, attempt, producer, stop)
                self.counters.retries += 1
                delay = Backoff(self.settings.consumer_backoff_seconds, 30.0).delay(attempt)
                log.warning(
                    "%s: event %s failed (attempt %d): %r; retrying in %.2fs",
                    self.name,
                    event.id,
                    attempt,
                    e,
                    delay,
                )
                await sleep_or_stop(stop, delay)
        return False

    async def _handle_once(self, event: TodoEvent) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(self._inbox_insert, (event.id, event.type, event.sequence))
            if cur.rowcount == 0:
                self.counters.duplicates += 1
                return
            await self.handler.handle(conn, event)
        self.counters.handled += 1
        if self._after_commit is not None:
            self._after_commit()

    async def dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        error: BaseException,
        attempts: int,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> bool:
        """Publish to the DLQ, retrying until the broker takes it (else no offset commit)."""
        headers = [(k, v) for k, v in (record.headers or ()) if k not in DLQ_HEADERS]
        headers += [
            (DLQ_ERROR, f"{type(error).__name__}: {error}"[:1000].encode()),
            (DLQ_ATTEMPTS, str(attempts).encode()),
            (DLQ_ORIGIN_TOPIC, record.topic.encode()),
            (DLQ_ORIGIN_PARTITION, str(record.partition).encode()),
            (DLQ_ORIGIN_OFFSET, str(record.offset).encode()),
            (DLQ_GROUP, self.group_id.encode()),
        ]
        try:
            await retry_async(
                lambda: producer.send_and_wait(
                    self.dlq, record.value, key=record.key, headers=headers
                ),
                stop=stop,
                backoff=OUTAGE_BACKOFF,
                what=f"{self.name}: DLQ publish",
                retry_on=(KafkaError,),
            )
        except Stopped:
            return False
        self.counters.dead_lettered += 1
        return True


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
    await producer.start()
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
