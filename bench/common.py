"""Shared set-up for benchmarks: a throwaway database on the configured server."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tododb.devservers.postgres import start_embedded
from tododb.infra.postgres import with_database


@contextmanager
def bench_database() -> Iterator[str]:
    """DATABASE_URL's server, or an embedded one; a fresh database dropped afterwards."""
    server = os.environ.get("DATABASE_URL") or start_embedded(
        Path(tempfile.mkdtemp(prefix="tododb-bench-")) / "data", keep=False
    )
    name = f"tododb_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rate(ops: int, writers: int, work: Callable[[int, int], None]) -> float:
    """Ops/s with ``writers`` threads; ``work(writer, i)`` does op i of that writer."""
    per_writer = ops // writers

    def run(w: int) -> None:
        for i in range(per_writer):
            work(w, i)

    start = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(run, range(writers)))
    return per_writer * writers / (time.perf_counter() - start)
