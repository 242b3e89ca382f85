"""A consumer group's lag, read from the broker: in messages (each partition's end
offset minus the group's committed offset) and in seconds (the age of the oldest
message the group has not consumed: the broker timestamp of the record at the committed
offset of each lagging partition), its members, and the depth of its dead-letter topic
(letters not yet redriven: the DLQ's end minus what ``todo consumer dlq redrive``
committed).

A reader of its own (an admin client and a consumer without a group: it joins nothing
and commits nothing), every call bounded by ``timeout``; the clients are made again
after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tododb.consumers.core import dlq_topic
from tododb.infra.settings import Settings

log = logging.getLogger(__name__)

_reading: ContextVar[bool] = ContextVar("tododb_lag_reading", default=False)


class _Quiet(logging.Filter):
    """Drops aiokafka's INFO lines about (un)assigning partitions while a lag reader
    assigns them: one pair per reading, every few seconds, says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not _reading.get()


for _name in ("aiokafka.consumer.subscription_state", "aiokafka.consumer.consumer"):
    logging.getLogger(_name).addFilter(_Quiet())


@dataclass
class GroupLag:
    group: str
    topic: str
    lag: int | None = None
    """Messages not consumed yet (None: the broker could not be asked)."""
    lag_seconds: float | None = None
    """Age of the oldest message not consumed yet; 0 when caught up."""
    committed: int = 0
    """Sum over the partitions of the group's committed offsets."""
    end: int = 0
    """Sum over the partitions of their end offsets."""
    partitions: int = 0
    state: str = "unknown"
    """The broker's group state (Stable, Empty, PreparingRebalance, ...) or unknown."""
    members: list[str] = field(default_factory=list)
    """``client_id@host`` of each member: the active processes."""
    dlq_depth: int | None = None
    """Dead letters not yet redriven."""
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GroupLagReader:
    """Reads groups' lag from the broker on clients it keeps open between calls."""

    def __init__(self, settings: Settings, *, timeout: float = 5.0) -> None:
        self.settings = settings
        self.topic = settings.kafka_topic
        self.timeout = timeout
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            servers = self.settings.kafka_bootstrap_servers
            if not servers:
                raise RuntimeError("KAFKA_BOOTSTRAP_SERVERS is not set")
            timeout_ms = int(self.timeout * 1000)
            admin = AIOKafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=timeout_ms)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=servers,
                enable_auto_commit=False,
                request_timeout_ms=max(timeout_ms, 1000),
                fetch_max_wait_ms=100,
            )
            try:
                await asyncio.wait_for(admin.start(), self.timeout)
                await asyncio.wait_for(consumer.start(), self.timeout)
            except BaseException:
                await _quietly(admin.close())
                await _quietly(consumer.stop())
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if admin is not None:
            await _quietly(admin.close())
        if consumer is not None:
            await _quietly(consumer.stop())

    async def read(self, group: str) -> GroupLag:
        """The group's lag, members and DLQ depth; on failure ``error`` says why."""
        result = GroupLag(group=group, topic=self.topic)
        _reading.set(True)  # this task's context only
        try:
            await asyncio.wait_for(self._read(group, result), self.timeout * 3)
        except Exception as e:  # the broker away must show as unknown, never fail a caller
            await self.close()
            result.lag = result.lag_seconds = None
            result.error = f"{type(e).__name__}: {e}".strip().rstrip(":")
        return result

    async def _read(self, group: str, result: GroupLag) -> None:
        admin, consumer = await self._clients()
        tps = await self._partitions(consumer, self.topic)
        result.partitions = len(tps)
        committed = await self._committed(admin, group, tps)
        lag, oldest, result.committed, result.end = await self._lag(consumer, tps, committed)
        result.lag = lag
        result.lag_seconds = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)
        result.state, result.members = await self._describe(admin, group)
        dlq = dlq_topic(self.topic, group)
        dlq_tps = await self._partitions(consumer, dlq)
        if dlq_tps:
            redriven = await self._committed(admin, f"{group}.redrive", dlq_tps)
            result.dlq_depth = (await self._lag(consumer, dlq_tps, redriven, oldest=False))[0]
        else:
            result.dlq_depth = 0

    async def _partitions(self, consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
        await asyncio.wait_for(consumer.topics(), self.timeout)  # fresh metadata
        partitions = consumer.partitions_for_topic(topic) or set()
        return [TopicPartition(topic, p) for p in sorted(partitions)]

    async def _committed(
        self, admin: AIOKafkaAdminClient, group: str, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        offsets = await asyncio.wait_for(
            admin.list_consumer_group_offsets(group, partitions=tps), self.timeout
        )
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def _lag(
        self,
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        committed: dict[TopicPartition, int],
        *,
        oldest: bool = True,
    ) -> tuple[int, float | None, int, int]:
        """(lag, timestamp in ms of the oldest unconsumed record, sum committed, sum end);
        a partition the group never committed counts from its beginning."""
        if not tps:
            return 0, None, 0, 0
        ends = await asyncio.wait_for(consumer.end_offsets(tps), self.timeout)
        starts = await asyncio.wait_for(consumer.beginning_offsets(tps), self.timeout)
        behind: dict[TopicPartition, int] = {}
        for tp in tps:
            ends[tp] = max(ends[tp], committed.get(tp, 0))  # never below what was consumed
            start = max(committed.get(tp, starts[tp]), starts[tp])
            if ends[tp] > start:
                behind[tp] = start
        first = None
        if oldest and behind:
            first, highwaters = await self._first_records(consumer, behind)
            for tp, mark in highwaters.items():
                # Some brokers (Tansu) list a partition's end as its last batch's first
                # offset + 1; a fetch's high watermark is exact.
                ends[tp] = max(ends[tp], mark)
        lag = sum(ends[tp] - start for tp, start in behind.items())
        return lag, first, sum(committed.values()), sum(ends.values())

    async def _first_records(
        self, consumer: AIOKafkaConsumer, behind: dict[TopicPartition, int]
    ) -> tuple[float | None, dict[TopicPartition, int]]:
        """The smallest timestamp among the records at each lagging partition's offset,
        and the high watermark each fetch reported."""
        consumer.assign(list(behind))
        for tp, offset in behind.items():
            consumer.seek(tp, offset)
        stamps: dict[TopicPartition, int] = {}
        highwaters: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + self.timeout
        while len(stamps) < len(behind) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                if records and tp not in stamps:
                    stamps[tp] = records[0].timestamp
                    highwaters[tp] = max(consumer.highwater(tp) or 0, records[-1].offset + 1)
                    consumer.pause(tp)
        consumer.unsubscribe()
        return (min(stamps.values()) if stamps else None), highwaters

    async def _describe(self, admin: AIOKafkaAdminClient, group: str) -> tuple[str, list[str]]:
        """The group's state and members (``unknown`` if the broker does not say)."""
        try:
            responses = await asyncio.wait_for(
                admin.describe_consumer_groups([group]), self.timeout
            )
            for response in responses:
                for described in response.groups:
                    state = str(described[2]) or "unknown"
                    members = [f"{m[1]}@{m[2]}" for m in described[5]]
                    return state, sorted(members)
        except Exception as e:  # DescribeGroups is optional on some brokers (Tansu)
            log.debug("describing group %s failed: %r", group, e)
        return "unknown", []


async def _quietly(closing: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closing, 5.0)


async def read_groups(
    settings: Settings,
    groups: list[str],
    timeout: float = 5.0,  # noqa: ASYNC109
) -> list[GroupLag]:
    """Each group's lag, on clients made and closed for this call (the CLI, the API)."""
    if not settings.kafka_bootstrap_servers:
        return [
            GroupLag(
                group=g, topic=settings.kafka_topic, error="KAFKA_BOOTSTRAP_SERVERS is not set"
            )
            for g in groups
        ]
    reader = GroupLagReader(settings, timeout=timeout)
    try:
        return [await reader.read(group) for group in groups]
    finally:
        await reader.close()
