"""Commands per second through the application layer, beside raw INSERT on the same server.

    python bench/append.py [--ops 2000]

Prints, for 1 and 16 concurrent writers: the application's commands/s (half creates, half
updates of an existing todo: each a load + decide + append), raw single-row
``INSERT ...; COMMIT`` per row, and batched INSERT (100 rows a commit), with ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import uuid
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database, rate
from tododb.entrypoints.bootstrap import build_application
from tododb.infra.settings import Settings

STATE = b'{"title": "benchmark todo", "description": "", "tags": ["a", "b"]}' * 2


def raw_single(url: str, ops: int, writers: int) -> float:
    local = threading.local()

    def work(_w: int, _i: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(url)
        conn.execute(
            "INSERT INTO raw_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, 1, 'bench', %s)",
            (uuid.uuid4(), STATE),
        )
        conn.commit()

    return rate(ops, writers, work)


def raw_batched(url: str, ops: int, writers: int, batch: int = 100) -> float:
    local = threading.local()

    def work(_w: int, _i: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(url)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO raw_events (originator_id, originator_version, topic, state) "
                "VALUES (%s, 1, 'bench', %s)",
                [(uuid.uuid4(), STATE) for _ in range(batch)],
            )
        conn.commit()

    return rate(ops // batch, writers, work) * batch


def app_commands(url: str, ops: int, writers: int) -> float:
    settings = Settings(database_url=url, jwt_secret="bench", db_pool_size=writers)  # type: ignore[arg-type]
    app = build_application(settings, url)
    todos: dict[int, uuid.UUID] = {}

    def work(w: int, i: int) -> None:
        owner = f"bench-{w}"
        if i % 2 == 0:
            todos[w] = app.create_todo(owner, title=f"todo {i}", tags=["a", "b"]).todo.id
        else:
            app.update_todo(owner, todos[w], {"title": f"renamed {i}"})

    try:
        return rate(ops, writers, work)
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=int(os.environ.get("BENCH_OPS", "2000")))
    args = parser.parse_args()
    console = Console()
    with bench_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE raw_events (originator_id uuid, originator_version bigint, "
                "topic text, state bytea, notification_id bigserial, "
                "PRIMARY KEY (originator_id, originator_version))"
            )
        table = Table(title=f"append throughput, {args.ops} ops per row (same server, same run)")
        for col in ("writers", "app cmd/s", "raw 1-row commit/s", "raw batched rows/s",
                    "app / raw 1-row", "app / raw batched"):
            table.add_column(col, justify="right")
        for writers in (1, 16):
            raw1 = raw_single(url, args.ops, writers)
            rawb = raw_batched(url, args.ops * 10, writers)
            cmd = app_commands(url, args.ops, writers)
            table.add_row(str(writers), f"{cmd:,.0f}", f"{raw1:,.0f}", f"{rawb:,.0f}",
                          f"{cmd / raw1:.2f}x", f"{cmd / rawb:.3f}x")
        console.print(table)


if __name__ == "__main__":
    main()
