"""Relay throughput beside a raw aiokafka producer, and end-to-end latency to a consumer.

    python bench/relay.py [--events 100000] [--rate 500] [--seconds 10]

1. Stores ``--events`` events (half ``created``, half ``completed``), then times the relay
   publishing all of them (CloudEvents envelopes, acks=all, position recorded per batch)
   and, in the same run and against the same broker, a raw ``AIOKafkaProducer`` sending
   the same number of messages of the same average size (pipelined, acks=all): the
   ratio is relay / raw.
2. Runs the relay and a consumer (the shared core: inbox insert + handler in one
   transaction) while commands arrive at a steady ``--rate`` per second, and reports the
   latency from the command's event time to the consumer's handler, p50/p99.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local Tansu started here
(then idempotence is off, as Tansu requires).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database
from tododb.application import TodoApplication
from tododb.bootstrap import build_application
from tododb.broker import TansuBroker, create_topic
from tododb.consumers.core import AsyncConn, ConsumerService
from tododb.consumers.ddl import inbox_ddl
from tododb.domain import Todo
from tododb.messaging import make_producer
from tododb.relay.envelope import TodoEvent
from tododb.relay.service import Relay
from tododb.settings import Settings

PARTITIONS = 6


async def until(condition: Callable[[], bool], deadline_s: float) -> None:
    """Poll ``condition`` until true, or fail after the deadline.

    The check runs off the event loop (it may query the database), so the measuring
    does not steal the loop from the relay being measured.
    """
    deadline = time.monotonic() + deadline_s
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {deadline_s}s")
        await asyncio.sleep(0.05)


def store_events(app: TodoApplication, events: int, batch: int = 250) -> None:
    """``events`` events, fast: many aggregates per ``save`` (one transaction each)."""
    todos_needed = events // 2
    for start in range(0, todos_needed, batch):
        todos = []
        for i in range(start, min(start + batch, todos_needed)):
            todo = Todo.create(owner=f"user-{i % 100}", title=f"benchmark todo {i}", tags=["a"])
            todo.complete()
            todos.append(todo)
        app.save(*todos)


async def time_relay(settings: Settings, url: str, app: TodoApplication) -> tuple[float, float]:
    """Seconds for the relay to publish the whole log; mean message size in bytes."""
    relay = Relay(settings, url, app)
    head = app.head_position()
    sample = relay.envelopes(app.recorder.select_notifications(start=1, limit=1000))
    mean_size = statistics.fmean(len(m.value) + len(m.key) for m in sample)
    await create_topic(str(settings.kafka_bootstrap_servers), settings.kafka_topic, PARTITIONS)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(relay.run(stop))
    await until(lambda: task.done() or relay.position() >= head, 600)
    if task.done():
        task.result()  # the relay failed: show why
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    relay.tracking.datastore.close()
    return elapsed, mean_size


async def time_raw(settings: Settings, count: int, size: int, window: int) -> float:
    """Seconds for a plain producer to send ``count`` messages of ``size`` bytes, acked."""
    topic = f"raw-{uuid.uuid4().hex[:8]}"
    await create_topic(str(settings.kafka_bootstrap_servers), topic, PARTITIONS)
    # Plain aiokafka: the relay's settings but the library's own (uncached) partitioner.
    producer: AIOKafkaProducer = make_producer(settings, partitioner=DefaultPartitioner())
    await producer.start()
    try:
        keys = [str(uuid.uuid4()).encode() for _ in range(1000)]
        value = b"x" * (size - 36)
        started = time.perf_counter()
        for start in range(0, count, window):
            futures = [
                await producer.send(topic, value, key=keys[i % len(keys)])
                for i in range(start, min(start + window, count))
            ]
            await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


class LatencyHandler:
    """Records how long each event took from its command to this handler."""

    name = "bench_latency"

    def __init__(self) -> None:
        self.latencies: list[float] = []

    def ddl(self) -> Sequence[str]:
        return ("CREATE SCHEMA IF NOT EXISTS bench_latency", inbox_ddl("bench_latency"))

    async def handle(self, conn: AsyncConn, event: TodoEvent) -> None:
        self.latencies.append((datetime.now(UTC) - event.time).total_seconds())


async def latency(
    settings: Settings, url: str, app: TodoApplication, rate: int, seconds: float
) -> tuple[int, float, float, float]:
    """(commands, achieved rate, p50 ms, p99 ms) at a steady command rate."""
    handler = LatencyHandler()
    consumer = ConsumerService(settings, url, handler, group_id=f"bench-{uuid.uuid4().hex[:6]}")
    relay = Relay(settings, url, app)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(consumer.run(stop))]
    # Warm up until the group is joined and the path is hot.
    await asyncio.to_thread(app.create_todo, "warm-up", title="warm-up")
    await until(lambda: consumer.counters.handled >= 1, 60)
    handler.latencies.clear()
    total = int(rate * seconds)

    def drive() -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            for i in range(total):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(app.create_todo, f"user-{i % 50}", title=f"latency {i}")
        return total / (time.perf_counter() - started)

    achieved = await asyncio.to_thread(drive)
    await until(lambda: len(handler.latencies) >= total, 60)
    stop.set()
    await asyncio.gather(*tasks)
    await consumer.close()
    relay.tracking.datastore.close()
    ms = sorted(x * 1000 for x in handler.latencies)
    p50 = ms[len(ms) // 2]
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return len(ms), achieved, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=500, help="commands/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    console = Console()
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None if external else TansuBroker().start()
    bootstrap = external or (broker.bootstrap_servers if broker else "")
    try:
        with bench_database() as url:
            settings = Settings(
                database_url=url,
                jwt_secret="bench-" + "x" * 32,  # type: ignore[arg-type]
                kafka_bootstrap_servers=bootstrap,
                kafka_idempotence=bool(external),
                kafka_topic=f"bench-{uuid.uuid4().hex[:8]}",
                kafka_topic_partitions=PARTITIONS,
                consumer_session_timeout_ms=2000,
                consumer_heartbeat_interval_ms=300,
            )
            app = build_application(settings, url)
            try:
                started = time.perf_counter()
                store_events(app, args.events)
                console.print(
                    f"stored {app.head_position():,} events in "
                    f"{time.perf_counter() - started:.1f}s; broker {bootstrap}"
                    f" ({'external' if external else 'Tansu, memory store'})"
                )
                relay_s, size = asyncio.run(time_relay(settings, url, app))
                events = app.head_position()
                raw_s = asyncio.run(
                    time_raw(settings, events, round(size), settings.relay_batch_size)
                )
                table = Table(title=f"relay throughput, {events:,} events (same broker, same run)")
                for col in ("mean msg bytes", "relay events/s", "raw producer msg/s", "ratio"):
                    table.add_column(col, justify="right")
                table.add_row(
                    f"{size:.0f}",
                    f"{events / relay_s:,.0f}",
                    f"{events / raw_s:,.0f}",
                    f"{raw_s / relay_s:.2f}x",
                )
                console.print(table)
                if not args.no_latency:
                    lat_settings = settings.model_copy(
                        update={"kafka_topic": f"bench-lat-{uuid.uuid4().hex[:8]}"}
                    )
                    n, achieved, p50, p99 = asyncio.run(
                        latency(lat_settings, url, app, args.rate, args.seconds)
                    )
                    table = Table(title="end-to-end latency: command → consumer handler")
                    for col in ("commands", "target/s", "achieved/s", "p50 ms", "p99 ms"):
                        table.add_column(col, justify="right")
                    table.add_row(
                        f"{n:,}", str(args.rate), f"{achieved:,.0f}", f"{p50:.1f}", f"{p99:.1f}"
                    )
                    console.print(table)
            finally:
                app.close()
    finally:
        if broker is not None:
            broker.stop(kill=True)


if __name__ == "__main__":
    main()
