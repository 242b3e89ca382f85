"""Live stream latency: command commit → its event on an open /v1/stream, p50/p99.

    python bench/stream.py [--rate 500] [--seconds 10] [--streams 100]

`todo serve` (one process) and the projection worker (`todo projections run`) run as
their own processes; ``--streams`` users each hold one stream open (asyncio, one thread)
and commands go through the application layer at a steady rate, spread over those users,
so every command is one event on exactly one stream. Baseline in the same run: raw
PostgreSQL NOTIFY → LISTEN latency, idle before the load and again under it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database, console, pct
from tododb.api.auth import issue_token
from tododb.entrypoints.bootstrap import build_application, build_read_side
from tododb.entrypoints.supervisor import todo_command
from tododb.infra.settings import Settings

SECRET = "bench-stream-secret"


def raw_notify_latency(url: str, n: int, pause: float = 0.0) -> list[float]:
    latencies: list[float] = []
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url) as sender:
        listener.execute("LISTEN bench_raw")
        for _ in range(n):
            sent = time.perf_counter()
            sender.execute("NOTIFY bench_raw")
            sender.commit()
            for _ in listener.notifies(stop_after=1):
                latencies.append(time.perf_counter() - sent)
            if pause:
                time.sleep(pause)  # pacing the probe, not a test wait
    return latencies


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def listen_all(
    base: str,
    users: list[str],
    arrivals: dict[int, float],
    opened: threading.Event,
    stop: threading.Event,
) -> None:
    """One stream per user; the arrival time of each event, by position."""
    ready = 0

    async def one(user: str, client: httpx.AsyncClient) -> None:
        nonlocal ready
        headers = {"Authorization": f"Bearer {issue_token(SECRET, user, ttl_seconds=3600)}"}
        async with client.stream("GET", f"{base}/v1/stream", headers=headers) as r:
            assert r.status_code == 200, await r.aread()
            ready += 1
            if ready == len(users):
                opened.set()
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    arrived = time.perf_counter()
                    arrivals[json.loads(line[6:])["position"]] = arrived
                if stop.is_set():
                    return

    limits = httpx.Limits(max_connections=len(users) + 10)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=None), limits=limits) as client:
        tasks = [asyncio.create_task(one(u, client)) for u in users]
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=100)
    args = parser.parse_args()
    out = console()
    with bench_database() as url:
        settings = Settings(database_url=url, jwt_secret=SECRET, db_pool_size=8)  # type: ignore[arg-type]
        app = build_application(settings, url)
        read_side = build_read_side(settings, url)
        read_side.ensure()
        idle_raw = raw_notify_latency(url, 1000)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "TODO_JWT_SECRET": SECRET,
            "TODO_LOG_LEVEL": "WARNING",
            "TODO_RATE_LIMIT_ENABLED": "false",
            "TODO_STREAM_MAX_PER_USER": "10",
        }
        worker = subprocess.Popen(todo_command("projections", "run"), env=env)
        port = free_port()
        api = subprocess.Popen(todo_command("serve", "--port", str(port)), env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.perf_counter() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.perf_counter() < deadline, "todo serve did not start"
                time.sleep(0.1)
            users = [f"streamer-{i}" for i in range(args.streams)]
            for user in users:  # warm: every user's Inbox exists, the worker is up
                app.create_todo(user, title="warm-up")
            warm = app.head_position()
            while read_side.position("todos") < warm:
                assert time.perf_counter() < deadline + 60, "projection worker did not start"
                time.sleep(0.05)

            arrivals: dict[int, float] = {}
            opened, stop = threading.Event(), threading.Event()
            listener = threading.Thread(
                target=lambda: asyncio.run(listen_all(base, users, arrivals, opened, stop))
            )
            listener.start()
            assert opened.wait(60), "the streams did not open"
            time.sleep(1.0)  # the hub has taken every stream on (its first round)

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
                        time.sleep(delay)  # pacing: a steady offered load
                    result = app.create_todo(users[i % len(users)], title=f"todo {i}")
                    committed = time.perf_counter()
                    assert result.position is not None
                    with lock:
                        commits.append((committed, result.position))

            loaded_raw: list[float] = []
            probe = threading.Thread(
                target=lambda: loaded_raw.extend(
                    raw_notify_latency(url, int(args.seconds * 50), pause=0.02)
                )
            )
            probe.start()
            with ThreadPoolExecutor(8) as pool:
                for _ in range(8):
                    pool.submit(writer)
            achieved = total / (time.perf_counter() - start)
            probe.join()
            head = app.head_position()
            deadline = time.perf_counter() + 30
            while not all(p in arrivals for _, p in commits) and time.perf_counter() < deadline:
                time.sleep(0.05)
            stop.set()
            listener.join(timeout=30)
        finally:
            api.terminate()
            worker.terminate()
            api.wait(30)
            worker.wait(30)
            app.close()

    lags = [arrivals[p] - t for t, p in commits if p in arrivals]
    missing = sum(1 for _, p in commits if p not in arrivals)
    table = Table(
        title=f"commit → stream event at {achieved:,.0f} commands/s (target {args.rate:g}), "
        f"{args.streams} open streams, same run"
    )
    for col in ("what", "samples", "p50 ms", "p99 ms", "max ms", "p99 / raw p99"):
        table.add_column(col, justify="right")
    for name, values in (
        ("raw NOTIFY→LISTEN, idle", idle_raw),
        ("raw NOTIFY→LISTEN, under load", loaded_raw),
    ):
        table.add_row(
            name,
            f"{len(values):,}",
            f"{pct(values, 50) * 1e3:.2f}",
            f"{pct(values, 99) * 1e3:.2f}",
            f"{max(values) * 1e3:.2f}",
            "1.0x",
        )
    table.add_row(
        "commit → event on its stream",
        f"{len(lags):,}",
        f"{pct(lags, 50) * 1e3:.2f}",
        f"{pct(lags, 99) * 1e3:.2f}",
        f"{max(lags) * 1e3:.2f}",
        f"{pct(lags, 99) / pct(loaded_raw, 99):.1f}x (loaded), "
        f"{pct(lags, 99) / pct(idle_raw, 99):.1f}x (idle)",
    )
    out.print(table)
    out.print(f"{missing} of {len(commits):,} commands never arrived; head position {head}")


if __name__ == "__main__":
    main()
