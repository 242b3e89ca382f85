"""Membership of a consumer group that never wedges.

Why: aiokafka retries some calls for ever. After a broker restart that lost its log (the
dev broker's memory store) an offset commit for a topic that is gone is retried without
end, and a consumer whose metadata dropped the topic does not look for it again for
minutes; either way it never fetches again. So every broker call here is bounded by a
timeout, failures are counted, and when the group is broken (a commit that cannot
finish, repeated failures, the topic gone or forgotten) the member leaves, a new aiokafka
consumer is made, and it joins again: it resumes from the committed offsets, or from the
start of what the broker now has (the inbox drops what was already handled).

Offsets are committed only for the assignment they were fetched under: after a
rebalance (a restart re-joins the group) a position from before may belong to a log
that no longer exists, and committing it would skip the new log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from tododb.infra.kafka import bootstrap_servers, create_topic, make_consumer
from tododb.infra.retry import Backoff, retry_async, sleep_or_stop
from tododb.infra.settings import Settings

log = logging.getLogger(__name__)

Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]

BROKEN_AFTER = 3
"""Consecutive failed broker calls (fetch, commit, metadata) that make a group broken."""
JOIN_BACKOFF = Backoff(0.5, 10.0)
"""Waiting out a broker that is down while (re-)joining."""


class GroupBroken(Exception):
    """This member cannot go on: leave the group, make a new consumer, join again."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Counts assignments, so offsets fetched before a rebalance are not committed."""

    def __init__(self, member: GroupMember) -> None:
        self.member = member

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.member.generation += 1

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.member.generation += 1
        log.info("%s: assigned %s", self.member.name, sorted(tp.partition for tp in assigned))
        self.member.assigned.set()


class GroupMember:
    """One member of ``group_id`` on ``topic``, re-made whenever the group breaks."""

    def __init__(self, settings: Settings, name: str, topic: str, group_id: str) -> None:
        self.settings = settings
        self.name = name
        self.topic = topic
        self.group_id = group_id
        # As long as the consumer's own request timeout (see ``make_consumer``) or a session.
        longest_ms = max(
            settings.kafka_request_timeout_ms, 5_000, settings.consumer_session_timeout_ms
        )
        self.timeout = longest_ms / 1000
        """Bound of every broker call; also the pause between idle health checks."""
        self.generation = 0
        self.assigned = asyncio.Event()
        """Set on every assignment (a consumer re-reads its parked keys)."""
        self.rejoins = 0
        self.consumer: AIOKafkaConsumer | None = None
        self._failures = 0
        self._checked_at = time.monotonic()

    # ---- joining and leaving ----------------------------------------------------------

    async def join(self, stop: asyncio.Event) -> None:
        """Create the topic if missing, then start a new consumer; until it works."""
        await retry_async(
            self._ensure_topic, stop=stop, backoff=JOIN_BACKOFF, what=f"{self.name}: topic"
        )
        await retry_async(
            self._start, stop=stop, backoff=JOIN_BACKOFF, what=f"{self.name}: joining the group"
        )
        self._failures = 0
        self._checked_at = time.monotonic()

    async def _ensure_topic(self) -> None:
        # With the configured partitions: a subscription to a missing topic would have
        # the broker auto-create it with its default count.
        await asyncio.wait_for(
            create_topic(
                bootstrap_servers(self.settings), self.topic, self.settings.kafka_topic_partitions
            ),
            self.timeout,
        )

    async def _start(self) -> None:
        consumer = make_consumer(self.settings, group_id=self.group_id)
        consumer.subscribe([self.topic], listener=_Listener(self))
        try:
            # Joining may wait for a departed member's session to expire (Tansu: ~1.8x).
            await asyncio.wait_for(consumer.start(), 2 * self.timeout)
        except BaseException:
            await _stop(consumer, self.timeout)
            raise
        self.consumer = consumer

    async def leave(self) -> None:
        """Stop the consumer (leaving the group), waiting no longer than one timeout."""
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await _stop(consumer, self.timeout)

    async def rejoin(self, stop: asyncio.Event, reason: BaseException) -> None:
        self.rejoins += 1
        log.error(
            "%s: consumer group %s is broken (%s); leaving it and joining again with a new "
            "consumer (re-join #%d), from the committed offsets or the start of the topic",
            self.name,
            self.group_id,
            reason,
            self.rejoins,
        )
        await self.leave()
        await self.join(stop)
        log.warning("%s: re-joined group %s", self.name, self.group_id)

    # ---- fetching and committing -----------------------------------------------------

    async def fetch(self, stop: asyncio.Event) -> tuple[Batches, int]:
        """The next records and the generation they were fetched under; when there are
        none, now and then make sure the topic is still there and known."""
        consumer = self._consumer()
        try:
            batches: Batches = await asyncio.wait_for(
                consumer.getmany(timeout_ms=500, max_records=200), self.timeout + 0.5
            )
        except (KafkaError, TimeoutError) as e:
            await self._failed("fetch", e, stop)
            return {}, self.generation
        if batches:
            self._failures = 0
        elif time.monotonic() - self._checked_at > self.timeout:
            await self._check(stop)
        return batches, self.generation

    async def commit(self, offsets: dict[TopicPartition, int], generation: int) -> None:
        """Commit offsets fetched under ``generation``; skipped if a rebalance came since
        (the partitions' next owner re-reads them and the inbox drops the repeats)."""
        if generation != self.generation:
            log.warning(
                "%s: partitions re-assigned while handling; not committing %s",
                self.name,
                {tp.partition: offset for tp, offset in offsets.items()},
            )
            return
        try:
            await asyncio.wait_for(self._consumer().commit(offsets), self.timeout)
        except TimeoutError as e:
            raise GroupBroken(f"offset commit did not finish in {self.timeout:.0f}s") from e
        except CommitFailedError as e:
            log.warning("%s: offset commit refused (group re-balanced): %s", self.name, e)
            self._strike("offset commit", e)
        except KafkaError as e:
            log.warning("%s: offset commit failed: %r", self.name, e)
            self._strike("offset commit", e)
        else:
            self._failures = 0

    async def _check(self, stop: asyncio.Event) -> None:
        """Idle: is the topic still on the broker, and does the consumer still know it?"""
        self._checked_at = time.monotonic()
        consumer = self._consumer()
        try:
            topics = await asyncio.wait_for(consumer.topics(), self.timeout)
        except (KafkaError, TimeoutError) as e:
            await self._failed("metadata", e, stop)
            return
        if self.topic not in topics:
            raise GroupBroken(f"topic {self.topic} is gone from the broker")
        if not consumer.partitions_for_topic(self.topic):
            raise GroupBroken(f"the consumer lost track of topic {self.topic}")
        self._failures = 0

    async def _failed(self, what: str, error: BaseException, stop: asyncio.Event) -> None:
        self._strike(what, error)
        delay = JOIN_BACKOFF.delay(self._failures)
        log.warning("%s: %s failed: %r; retrying in %.1fs", self.name, what, error, delay)
        await sleep_or_stop(stop, delay)

    def _strike(self, what: str, error: BaseException) -> None:
        self._failures += 1
        if self._failures >= BROKEN_AFTER:
            raise GroupBroken(f"{what} failed {self._failures} times in a row: {error!r}")

    def _consumer(self) -> AIOKafkaConsumer:
        if self.consumer is None:
            raise GroupBroken("no consumer")
        return self.consumer


async def _stop(consumer: AIOKafkaConsumer, seconds: float) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(consumer.stop(), seconds)
