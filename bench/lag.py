"""Live lag of the `todos` view: command commit → event visible in the view, p50/p99.

    python bench/lag.py [--rate 500] [--seconds 10]

Commands go through the application layer at a steady rate (paced writers), the
projection worker runs as its own process (`todo projections run`), and a listener
records when the view's position passes each command's position. Baseline in the same
run: raw PostgreSQL NOTIFY → LISTEN latency, the floor any push-based view can reach.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database
from tododb.entrypoints.bootstrap import build_application, build_read_side
from tododb.infra.settings import Settings
from tododb.projections.registry import read_position


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def raw_notify_latency(url: str, n: int = 2000) -> list[float]:
    latencies: list[float] = []
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url) as sender:
        listener.execute("LISTEN bench_raw")
        for _ in range(n):
            sent = time.perf_counter()
            sender.execute("NOTIFY bench_raw")
            sender.commit()
            for _ in listener.notifies(stop_after=1):
                latencies.append(time.perf_counter() - sent)
    return latencies


def watch_positions(url: str, schema: str, stop: threading.Event) -> list[tuple[float, int]]:
    """(time, todos position) each time the projection commits."""
    seen: list[tuple[float, int]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("LISTEN tododb_views")
        while not stop.is_set():
            for _ in conn.notifies(timeout=0.2, stop_after=1):
                pass
            seen.append((time.perf_counter(), read_position(conn, schema, "todos")))
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    console = Console()
    with bench_database() as url:
        settings = Settings(database_url=url, jwt_secret="bench", db_pool_size=8)  # type: ignore[arg-type]
        app = build_application(settings, url)
        read_side = build_read_side(settings, url)
        read_side.ensure()
        raw = raw_notify_latency(url)
        worker = subprocess.Popen(
            [sys.executable, "-m", "tododb.entrypoints.cli", "projections", "run"],
            env={**os.environ, "DATABASE_URL": url, "TODO_LOG_LEVEL": "WARNING"},
        )
        warm = app.create_todo("warm-up", title="warm-up").position or 0
        deadline = time.perf_counter() + 60
        while read_side.position("todos") < warm:  # the worker is up and caught up
            assert time.perf_counter() < deadline, "projection worker did not start"
            time.sleep(0.05)
        stop = threading.Event()
        observations: list[tuple[float, int]] = []
        watcher = threading.Thread(
            target=lambda: observations.extend(watch_positions(url, read_side.schema, stop))
        )
        watcher.start()
        total = int(args.rate * args.seconds)
        commits: list[tuple[float, int]] = []
        lock = threading.Lock()
        start = time.perf_counter() + 0.5
        counter = iter(range(total))

        def writer() -> None:
            for i in counter:
                due = start + i / args.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # pacing: a steady offered load, not a test wait
                result = app.create_todo(f"lag-{i % 50}", title=f"todo {i}")
                committed = time.perf_counter()
                assert result.position is not None
                with lock:
                    commits.append((committed, result.position))

        with ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(writer)
        achieved = total / (time.perf_counter() - start)
        head = app.head_position()
        deadline = time.perf_counter() + 30
        while read_side.position("todos") < head and time.perf_counter() < deadline:
            time.sleep(0.05)
        stop.set()
        watcher.join()
        worker.terminate()
        worker.wait(30)
        app.close()

    times = [t for t, _ in observations]
    positions = [p for _, p in observations]
    lags = []
    for committed, position in commits:
        i = bisect_left(positions, position)  # positions only grow
        if i < len(positions):
            j = bisect_left(times, committed)
            k = max(i, j)  # the first observation after the commit showing the position
            while k < len(positions) and positions[k] < position:
                k += 1
            if k < len(times):
                lags.append(max(times[k] - committed, 0.0))
    table = Table(title=f"live lag at {achieved:,.0f} commands/s (target {args.rate:g}), same run")
    for col in ("what", "samples", "p50 ms", "p99 ms", "max ms", "p50 / raw"):
        table.add_column(col, justify="right")
    table.add_row("raw NOTIFY→LISTEN", f"{len(raw):,}", f"{pct(raw, 50) * 1e3:.2f}",
                  f"{pct(raw, 99) * 1e3:.2f}", f"{max(raw) * 1e3:.2f}", "1.0x")
    table.add_row("commit → todos view", f"{len(lags):,}", f"{pct(lags, 50) * 1e3:.2f}",
                  f"{pct(lags, 99) * 1e3:.2f}", f"{max(lags) * 1e3:.2f}",
                  f"{pct(lags, 50) / pct(raw, 50):.1f}x")
    console.print(table)
    console.print(f"mean lag {statistics.mean(lags) * 1e3:.2f} ms over {len(commits):,} commands")


if __name__ == "__main__":
    main()
