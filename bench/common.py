"""Shared set-up for benchmarks: a throwaway database on the configured server."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from rich.console import Console

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


def console() -> Console:
    """Wide enough for the tables when the output is a file or a pipe (rich's default: 80)."""
    return Console(width=None if sys.stdout.isatty() else 160)


def rate(
    ops: int, writers: int, work: Callable[[int, int], None], warmup: int = 0
) -> float:
    """Ops/s with ``writers`` threads; ``work(writer, i)`` does op i of that writer.

    Each thread first does ``warmup`` ops of its own (ops ``-warmup`` to ``-1``: connections
    opened, statements prepared), then all start timing together, so the figure is the
    steady state, not connection set-up.
    """
    per_writer = ops // writers
    ready = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            for i in range(-warmup, 0):
                work(w, i)
            ready.wait()
            for i in range(per_writer):
                work(w, i)
        except BaseException as e:
            errors.append(e)
            ready.abort()  # the others (and the timer) must not wait for this one

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return per_writer * writers / elapsed


def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class NullExporter(SpanExporter):
    """Spans batched and handed over like OTLP's, then dropped: the SDK's cost alone
    (issue #13 measures tracing with it, beside tracing off)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS
