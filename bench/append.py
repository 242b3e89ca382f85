"""Commands per second through the application layer, and appends through the event store
alone, beside raw INSERT on the same server.

    python bench/append.py [--ops 2000]

Prints, for 1, 16 and 64 concurrent writers (threads): the application's commands/s
(half creates, half updates of an existing todo: each a load + decide + append), raw
single-row ``INSERT ...; COMMIT`` per row on as many connections, and batched INSERT
(100 rows a commit), with ratios. Then the event store alone: ``insert_events`` of
ready-made stored events, one call per todo created (one command's events), by 16
writers, beside the raw single-row commits of 16 connections.

Every writer warms up first (its connection opened, statements prepared); the clock
starts when all are ready. Goals (issue #10): event store alone >= 1.0x raw single-row
commits (16 connections); application, 16 writers >= 0.5x that; 1 writer no regression.
Last, 16 writers with tracing off and on, timed off, on, on, off 3 times
(``--tracing-rounds``; issue #13: at most 10% slower).

The process's garbage collector is tuned as ``todo serve`` tunes its own once built
(``tododb.infra.gc_tuning``), so the application runs as it does in the API.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NullExporter, bench_database, console, rate
from tododb.application import TodoApplication
from tododb.domain import Todo
from tododb.entrypoints.bootstrap import build_application
from tododb.infra import tracing
from tododb.infra.gc_tuning import settle_after_startup
from tododb.infra.settings import Settings

STATE = b'{"title": "benchmark todo", "description": "", "tags": ["a", "b"]}' * 2
INSERT = (
    "INSERT INTO raw_events (originator_id, originator_version, topic, state) "
    "VALUES (%s, 1, 'bench', %s)"
)
WARMUP = 2
"""Ops each writer does before the clock starts."""


def raw_single(url: str, ops: int, writers: int) -> float:
    """One row per transaction, each writer on a connection of its own."""
    conns = [psycopg.connect(url) for _ in range(writers)]

    def work(w: int, _i: int) -> None:
        conns[w].execute(INSERT, (uuid.uuid4(), STATE))
        conns[w].commit()

    try:
        return rate(ops, writers, work, warmup=WARMUP)
    finally:
        for conn in conns:
            conn.close()


def raw_batched(url: str, ops: int, writers: int, batch: int = 100) -> float:
    """``batch`` rows per transaction: how fast the server takes rows at all."""
    conns = [psycopg.connect(url) for _ in range(writers)]

    def work(w: int, _i: int) -> None:
        with conns[w].cursor() as cur:
            cur.executemany(INSERT, [(uuid.uuid4(), STATE) for _ in range(batch)])
        conns[w].commit()

    try:
        return rate(max(ops // batch, writers), writers, work, warmup=1) * batch
    finally:
        for conn in conns:
            conn.close()


def app_for(url: str, writers: int) -> TodoApplication:
    settings = Settings(database_url=url, jwt_secret="bench", db_pool_size=writers)  # type: ignore[arg-type]
    return build_application(settings, url)


def app_commands(url: str, ops: int, writers: int) -> float:
    """Half creates, half renames of the writer's latest todo, through the application."""
    app = app_for(url, writers)
    todos: dict[int, uuid.UUID] = {}

    def work(w: int, i: int) -> None:
        owner = f"bench-{w}"
        if i % 2 == 0:  # warm-up ops are -2 and -1: a create, then an update
            todos[w] = app.create_todo(owner, title=f"todo {i}", tags=["a", "b"]).todo.id
        else:
            app.update_todo(owner, todos[w], {"title": f"renamed {i}"})

    try:
        return rate(ops, writers, work, warmup=WARMUP)
    finally:
        app.close()


def event_store_alone(url: str, ops: int, writers: int) -> float:
    """``recorder.insert_events`` calls/s, each the stored events of one todo created.

    The events are made and mapped (serialised) before the clock starts: this times the
    event store's append path alone, what the application adds on top of a raw commit.
    """
    app = app_for(url, writers)
    per_writer = ops // writers + WARMUP
    ready: list[list[list[Any]]] = [
        [stored_create(app, w, i) for i in range(per_writer)] for w in range(writers)
    ]

    def work(w: int, i: int) -> None:
        app.recorder.insert_events(ready[w][i + WARMUP])

    try:
        return rate(ops, writers, work, warmup=WARMUP)
    finally:
        app.close()


def stored_create(app: TodoApplication, writer: int, i: int) -> list[Any]:
    todo = Todo.create(owner=f"bench-{writer}", title=f"todo {i}", tags=["a", "b"])
    return [app.mapper.to_stored_event(e) for e in todo.collect_events()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=int(os.environ.get("BENCH_OPS", "2000")))
    parser.add_argument(
        "--tracing-rounds", type=int, default=3, help="rounds of tracing off, on, on, off"
    )
    args = parser.parse_args()
    out = console()
    settle_after_startup()  # as `todo serve` does once built: the app as it runs there
    with bench_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE raw_events (originator_id uuid, originator_version bigint, "
                "topic text, state bytea, notification_id bigserial, "
                "PRIMARY KEY (originator_id, originator_version))"
            )
        app_for(url, 1).close()  # the event store's tables, before anyone times anything
        table = Table(title=f"append throughput, {args.ops} ops per row (same server, same run)")
        for col in ("what", "writers", "ops/s", "raw 1-row commit/s", "÷ raw 1-row",
                    "raw batched rows/s", "÷ raw batched", "goal"):
            table.add_column(col, justify="right")
        goals = {1: "no regression", 16: "≥ 0.50x", 64: ""}
        for writers in (1, 16, 64):
            raw1 = raw_single(url, args.ops, writers)
            rawb = raw_batched(url, args.ops * 10, writers)
            cmd = app_commands(url, args.ops, writers)
            table.add_row("app commands", str(writers), f"{cmd:,.0f}", f"{raw1:,.0f}",
                          f"{cmd / raw1:.2f}x", f"{rawb:,.0f}", f"{cmd / rawb:.3f}x",
                          goals[writers])
            if writers == 16:
                alone = event_store_alone(url, args.ops, writers)
                table.add_row("event store insert_events", str(writers), f"{alone:,.0f}",
                              f"{raw1:,.0f}", f"{alone / raw1:.2f}x", f"{rawb:,.0f}",
                              f"{alone / rawb:.3f}x", "≥ 1.00x")
        off, on, ratios = tracing_off_and_on(url, args.ops, 16, args.tracing_rounds)
        spread = ", ".join(f"{r:.2f}" for r in sorted(ratios))
        table.add_row("app commands, tracing off", "16", f"{off:,.0f}", "", "", "", "", "")
        table.add_row("app commands, tracing on", "16", f"{on:,.0f}", "", "", "",
                      f"{on / off:.2f}x of off (rounds: {spread})", "≥ 0.90x of off")
        out.print(table)


def tracing_off_and_on(
    url: str, ops: int, writers: int, rounds: int
) -> tuple[float, float, list[float]]:
    """Issue #13's overhead: the SDK batching spans to an exporter that drops them,
    beside no exporter. Timed off, on, on, off, ``rounds`` times (the table grows as it
    runs: the order cancels that drift out); the mean of each, and each round's on ÷ off
    (one round is a second or two: its ratio swings by more than the 10% measured)."""
    processor = BatchSpanProcessor(NullExporter())
    rates: dict[bool, list[float]] = {False: [], True: []}
    ratios: list[float] = []
    for _ in range(rounds):
        for traced in (False, True, True, False):
            if traced:
                tracing.add_processor(processor)
            else:
                tracing.remove_processor(processor)
            rates[traced].append(app_commands(url, ops, writers))
        ratios.append(sum(rates[True][-2:]) / sum(rates[False][-2:]))
    tracing.remove_processor(processor)
    return sum(rates[False]) / len(rates[False]), sum(rates[True]) / len(rates[True]), ratios


if __name__ == "__main__":
    main()
