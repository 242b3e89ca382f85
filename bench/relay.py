"""Relay throughput beside a raw aiokafka producer, and end-to-end latency to a consumer.

    python bench/relay.py [--events 100000] [--rate 500] [--seconds 10]
                          [--no-throughput] [--no-latency]

1. Stores ``--events`` events (half ``created``, half ``completed``), then times the relay
   publishing all of them (CloudEvents envelopes, acks=all, position recorded per range)
   and, in the same run and against the same broker, a raw ``AIOKafkaProducer`` sending
   the same number of messages of the same average size with the same header, acked,
   two ways: ``send()`` per message (the usual API) and ``create_batch``/``send_batch``
   (the API the relay itself uses). Ratios are relay / raw.
2. Runs the relay and a consumer (the shared core: inbox insert + handler in one
   transaction) while two other processes issue commands at a steady ``--rate`` per
   second, and reports the latency from each command's commit to the consumer's handler,
   p50/p99.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local Tansu started here
(then idempotence is off, as Tansu requires).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database
from tododb.application import TodoApplication
from tododb.consumers.core import AsyncConn, ConsumerService
from tododb.consumers.ddl import inbox_ddl
from tododb.contract import CONTENT_TYPE, TodoEvent
from tododb.devservers.tansu import TansuBroker
from tododb.domain import Todo
from tododb.entrypoints.bootstrap import build_application, build_relay
from tododb.infra.kafka import create_topic, make_producer
from tododb.infra.settings import Settings

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
    relay = build_relay(settings, url, app)
    head = app.head_position()
    sample = relay.decoder.range(1, 1000)
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


async def time_raw(settings: Settings, count: int, size: int, window: int, api: str) -> float:
    """Seconds for a plain producer to send ``count`` messages of ``size`` bytes, acked.

    ``api`` "send": one ``send()`` per message, the library's default partitioner (what
    most aiokafka code does). "batch": ``create_batch``/``send_batch``, one batch per
    partition per window, partitions looked up in a precomputed table (the relay's
    send path, minus everything the relay does besides sending).
    """
    topic = f"raw-{uuid.uuid4().hex[:8]}"
    await create_topic(str(settings.kafka_bootstrap_servers), topic, PARTITIONS)
    producer: AIOKafkaProducer = make_producer(settings, partitioner=DefaultPartitioner())
    await producer.start()
    try:
        keys = [str(uuid.uuid4()).encode() for _ in range(1000)]
        partitions = list(range(PARTITIONS))
        partition_of = {key: DefaultPartitioner()(key, partitions, partitions) for key in keys}
        headers = [("content-type", CONTENT_TYPE.encode())]  # as on the relay's messages
        value = b"x" * (size - 36)
        started = time.perf_counter()
        for start in range(0, count, window):
            indexes = range(start, min(start + window, count))
            if api == "send":
                futures = [
                    await producer.send(topic, value, key=keys[i % 1000], headers=headers)
                    for i in indexes
                ]
            else:
                batches: dict[int, BatchBuilder] = {}
                futures = []
                for i in indexes:
                    key = keys[i % 1000]
                    partition = partition_of[key]
                    batch = batches.get(partition) or batches.setdefault(
                        partition, producer.create_batch()
                    )
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        futures.append(await producer.send_batch(batch, topic, partition=partition))
                        batches[partition] = batch = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=None, headers=headers)
                for partition, batch in batches.items():
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


def drive(
    settings: Settings, url: str, rate: float, total: int, driver: int
) -> tuple[float, dict[str, float]]:
    """In a process of its own: ``total`` create commands at ``rate``/s.

    Returns the rate achieved and, per todo, the wall-clock time its command returned
    (just after its transaction committed).
    """
    app = build_application(settings, url)
    committed: dict[str, float] = {}

    def create(i: int) -> None:
        result = app.create_todo(f"user-{i % 50}", title=f"latency {driver}.{i}")
        committed[str(result.todo.id)] = time.time()

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            for i in range(total):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(create, i)
        return total / (time.perf_counter() - started), committed
    finally:
        app.close()


class LatencyHandler:
    """Records when each todo's created event reached this handler (wall clock)."""

    name = "bench_latency"

    def __init__(self, count: Synchronized[int]) -> None:
        self.handled: dict[str, float] = {}
        self.count = count

    def ddl(self) -> Sequence[str]:
        return ("CREATE SCHEMA IF NOT EXISTS bench_latency", inbox_ddl("bench_latency"))

    async def handle(self, conn: AsyncConn, event: TodoEvent) -> None:
        self.handled[event.todo_id] = time.time()
        self.count.value += 1


def consume(
    settings: Settings,
    url: str,
    group: str,
    count: Synchronized[int],
    stop: EventType,
    results: Connection,
) -> None:
    """In a process of its own (as deployed): the consumer, until ``stop``; then its times."""
    handler = LatencyHandler(count)

    async def main() -> None:
        consumer = ConsumerService(settings, url, handler, group_id=group)
        halt = asyncio.Event()
        task = asyncio.create_task(consumer.run(halt))
        await asyncio.to_thread(stop.wait)
        halt.set()
        await task
        await consumer.close()

    asyncio.run(main())
    results.send(handler.handled)


async def latency(
    settings: Settings, url: str, app: TodoApplication, rate: int, seconds: float
) -> tuple[int, float, float, float]:
    """(commands, achieved rate, p50 ms, p99 ms) at a steady command rate.

    Latency is from a command's commit (its call returning, in a driver process) to the
    consumer's handler (in the consumer's process), both on this machine's wall clock.
    The relay runs here; commands and the consumer run in processes of their own, as
    API replicas and consumer services would, not competing for this process's GIL.
    """
    spawn = multiprocessing.get_context("spawn")
    count, stop, (results, sender) = spawn.Value("i", 0), spawn.Event(), spawn.Pipe(False)
    group = f"bench-{uuid.uuid4().hex[:6]}"
    consumer = spawn.Process(target=consume, args=(settings, url, group, count, stop, sender))
    consumer.start()
    relay = build_relay(settings, url, app)
    halt = asyncio.Event()
    task = asyncio.create_task(relay.run(halt))
    committed: dict[str, float] = {}
    try:
        # Warm up until the group is joined and the path is hot.
        await asyncio.to_thread(app.create_todo, "warm-up", title="warm-up")
        await until(lambda: count.value >= 1, 60)
        drivers = 2
        share = int(rate * seconds) // drivers
        with ProcessPoolExecutor(drivers, mp_context=spawn) as pool:
            loop = asyncio.get_running_loop()
            runs = [
                loop.run_in_executor(pool, drive, settings, url, rate / drivers, share, d)
                for d in range(drivers)
            ]
            outcomes = await asyncio.gather(*runs)
        achieved = sum(rate for rate, _ in outcomes)
        committed = {todo: at for _, times in outcomes for todo, at in times.items()}
        await until(lambda: count.value >= 1 + len(committed), 60)
    finally:
        stop.set()
        handled: dict[str, float] = await asyncio.to_thread(results.recv)
        await asyncio.to_thread(consumer.join, 30)
        halt.set()
        await task
        relay.tracking.datastore.close()
    ms = sorted((handled[todo] - at) * 1000 for todo, at in committed.items())
    p50 = ms[len(ms) // 2]
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return len(ms), achieved, p50, p99


def throughput(
    console: Console, settings: Settings, url: str, app: TodoApplication, events: int
) -> None:
    started = time.perf_counter()
    store_events(app, events)
    console.print(
        f"stored {app.head_position():,} events in {time.perf_counter() - started:.1f}s;"
        f" broker {settings.kafka_bootstrap_servers}"
    )
    relay_s, size = asyncio.run(time_relay(settings, url, app))
    events = app.head_position()
    window = settings.relay_batch_size
    raw = {
        api: asyncio.run(time_raw(settings, events, round(size), window, api))
        for api in ("send", "batch")
    }
    table = Table(title=f"relay throughput, {events:,} events (same broker, same run)")
    for col in ("mean msg bytes", "events/s or msg/s", "relay ÷ this"):
        table.add_column(col, justify="right")
    table.add_row(f"{size:.0f}", f"relay {events / relay_s:,.0f}", "")
    for api, seconds in raw.items():
        table.add_row("", f"raw {api}() {events / seconds:,.0f}", f"{seconds / relay_s:.2f}x")
    console.print(table)


def latency_table(
    console: Console, settings: Settings, url: str, app: TodoApplication, rate: int, seconds: float
) -> None:
    """On a topic of its own; the relay resumes from where the throughput run left it."""
    lat_settings = settings.model_copy(update={"kafka_topic": f"bench-lat-{uuid.uuid4().hex[:8]}"})
    n, achieved, p50, p99 = asyncio.run(latency(lat_settings, url, app, rate, seconds))
    table = Table(title="end-to-end latency: command → consumer handler")
    for col in ("commands", "target/s", "achieved/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    table.add_row(f"{n:,}", str(rate), f"{achieved:,.0f}", f"{p50:.1f}", f"{p99:.1f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=500, help="commands/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
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
                if not args.no_throughput:
                    throughput(console, settings, url, app, args.events)
                if not args.no_latency:
                    latency_table(console, settings, url, app, args.rate, args.seconds)
            finally:
                app.close()
    finally:
        if broker is not None:
            broker.stop(kill=True)


if __name__ == "__main__":
    main()
