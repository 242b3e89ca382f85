"""Helpers for tests of the relay and the consumers: settings, waiting, a webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tododb.devservers.tansu import BrokerHandle
from tododb.infra.settings import Settings

T = TypeVar("T")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def kafka_settings(settings: Settings, broker: BrokerHandle, **update: Any) -> Settings:
    """Settings for one test: its own topic, Tansu-friendly producer and group timings."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": broker.bootstrap_servers,
        "kafka_topic": unique("todos.task"),
        "kafka_topic_partitions": 3,
        "kafka_idempotence": False,
        "kafka_request_timeout_ms": 3000,
        "relay_backoff_max_seconds": 1.0,
        "consumer_session_timeout_ms": 2000,
        "consumer_heartbeat_interval_ms": 300,
        "consumer_backoff_seconds": 0.01,
        "webhook_backoff_seconds": 0.05,
    }
    values.update(update)
    return settings.model_copy(update=values)


async def eventually(
    check: Callable[[], Awaitable[T | None] | T | None],
    *,
    within: float = 60.0,
    what: str = "condition",
) -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        result = check()
        last = await result if asyncio.iscoroutine(result) else result
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running(
    *mains: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> AsyncIterator[asyncio.Event]:
    """Run services as tasks for the block; stop them cleanly after it (errors surface)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(main(stop)) for main in mains]
    try:
        yield stop
        for task in tasks:
            if task.done():
                task.result()  # a service that died is a failure
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=30)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


async def read_topic(bootstrap: str, topic: str, *, within: float = 30.0) -> list[Any]:
    """Every record on the topic right now (no group: assign all partitions)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + within
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                return records
            assert time.monotonic() < deadline, "could not read the topic to its end"
            batch = await consumer.getmany(*tps, timeout_ms=200)
            for messages in batch.values():
                records.extend(messages)
    finally:
        await consumer.stop()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """A real local HTTP server recording POSTs; answers ``status`` (default 204)."""

    status: int = 204
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                receiver.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``base``/metrics (a worker's probe port), by name and labels."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
