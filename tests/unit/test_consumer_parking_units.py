"""The pure parts of parking and of the never-wedging group member: no servers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from tododb.consumers import parking
from tododb.consumers.ddl import parked_ddl
from tododb.consumers.group import BROKEN_AFTER, GroupBroken, GroupMember
from tododb.consumers.parking import ParkedStore, ParkingLot, Release, decode_headers
from tododb.consumers.runner import CONSUMERS, handler_for
from tododb.infra.settings import Settings

SETTINGS = Settings(
    kafka_bootstrap_servers="127.0.0.1:1",
    kafka_request_timeout_ms=3000,
    consumer_session_timeout_ms=2000,
)


def member() -> GroupMember:
    return GroupMember(SETTINGS, "test", "todos.task", "group")


def test_headers_survive_the_round_trip_through_json() -> None:
    headers = [("content-type", b"application/cloudevents+json"), ("raw", b"\x00\xff")]
    assert decode_headers(parking.encode_headers(headers).obj) == headers
    assert decode_headers(parking.encode_headers(None).obj) == []


def test_keys_are_the_kafka_key_as_text() -> None:
    class Record:
        key: bytes | None = b"0b5f7e3c-2d1a-4c8e-9f6b-3a2e1d4c5b6a"

    record: Any = Record()
    assert parking.record_key(record) == "0b5f7e3c-2d1a-4c8e-9f6b-3a2e1d4c5b6a"
    record.key = None
    assert parking.record_key(record) is None  # keyless: nothing to park


def test_the_parked_set_is_stale_until_loaded_and_after_an_assignment() -> None:
    lot = ParkingLot(pool=None, store=ParkedStore("analytics", "group"))  # type: ignore[arg-type]
    assert lot.stale
    assert lot.due()
    lot._loaded_at = time.monotonic()
    lot.keys = {"a"}
    assert not lot.stale
    assert not lot.due()
    assert lot.holds("a")
    assert not lot.holds("b")
    lot._loaded_at = time.monotonic() - parking.REFRESH_SECONDS - 1
    assert lot.due()  # a key released by another process is noticed this late at most
    lot.invalidate()
    assert lot.stale


def test_errors_are_described_briefly() -> None:
    assert parking.describe(ValueError("x" * 5000)).startswith("ValueError: x")
    assert len(parking.describe(ValueError("x" * 5000))) == 1000


def test_release_reports_as_json() -> None:
    assert Release("k", handled=2, released=True).as_json() == {
        "key": "k",
        "handled": 2,
        "skipped": 0,
        "released": True,
        "remaining": 0,
        "error": None,
    }


def test_the_parked_table_lives_in_the_consumers_schema() -> None:
    table, waiting, copies = parked_ddl("analytics")
    assert table.startswith("CREATE TABLE IF NOT EXISTS analytics.parked (")
    for column in ("key", "topic", "partition", '"offset"', "value", "headers", "error"):
        assert column in table
    assert "WHERE status = 'parked'" in waiting
    assert "UNIQUE" in copies


def test_handlers_by_consumer_name() -> None:
    assert [handler_for(name).name for name in CONSUMERS] == ["notifications", "analytics"]
    with pytest.raises(ValueError, match="unknown consumer"):
        handler_for("billing")


async def test_offsets_fetched_before_a_rebalance_are_not_committed() -> None:
    m = member()
    fetched_under = m.generation
    m.generation += 2  # revoked and assigned again meanwhile
    # No consumer at all: a commit that tried to reach one would raise GroupBroken.
    await m.commit({TopicPartition("todos.task", 0): 42}, fetched_under)


async def test_repeated_failures_break_the_group() -> None:
    m = member()
    for _ in range(BROKEN_AFTER - 1):
        m._strike("fetch", KafkaError("down"))
    with pytest.raises(GroupBroken, match=f"failed {BROKEN_AFTER} times"):
        m._strike("fetch", KafkaError("down"))


async def test_a_member_without_a_consumer_is_broken() -> None:
    with pytest.raises(GroupBroken):
        await member().fetch(asyncio.Event())


def test_every_broker_call_is_bounded_by_the_longest_configured_timeout() -> None:
    assert member().timeout == 5.0  # the consumer's own request timeout is at least 5 s
    longer = SETTINGS.model_copy(update={"consumer_session_timeout_ms": 12_000})
    assert GroupMember(longer, "test", "todos.task", "group").timeout == 12.0
