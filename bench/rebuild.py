"""Rebuild speed of the `todos` view, beside the raw rate of reading + decoding the log.

    python bench/rebuild.py [--events 1000000]

The fixture is written fast: aggregates are made in memory and their stored events
inserted in large batches through the library's recorder. Then, in the same run:
  raw     read every notification in pages and decode it to a domain event, writing nothing
  rebuild `rebuild(read_side, "todos")`: the blue/green replay into a new generation
The goal is rebuild >= 0.5x raw.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database
from tododb.domain import Todo
from tododb.entrypoints.bootstrap import build_application, build_read_side
from tododb.infra.settings import Settings
from tododb.projections.rebuild import rebuild


def write_fixture(app: object, events: int, console: Console) -> None:
    """~4 events per todo: created, title changed, due set, completed."""
    assert hasattr(app, "mapper")
    assert hasattr(app, "recorder")
    due = datetime(2031, 1, 1, tzinfo=UTC)
    batch: list[object] = []
    written = 0
    with Progress(console=console) as progress:
        task = progress.add_task("writing fixture", total=events)
        i = 0
        while written < events:
            todo = Todo.create(owner=f"user-{i % 1000}", title=f"todo {i}", tags=["bench", "x"])
            todo.change_title(f"todo {i} renamed")
            todo.set_due(due + timedelta(minutes=i))
            todo.complete()
            pending = todo.collect_events()[: events - written]
            batch += [app.mapper.to_stored_event(e) for e in pending]
            written += len(pending)
            i += 1
            if len(batch) >= 1000 or written >= events:
                app.recorder.insert_events(batch)
                progress.update(task, completed=written)
                batch = []


def raw_read_decode(app: object, page: int = 2000) -> tuple[int, float]:
    assert hasattr(app, "mapper")
    assert hasattr(app, "recorder")
    start = time.perf_counter()
    position, count = 0, 0
    while True:
        notifications = app.recorder.select_notifications(start=position + 1, limit=page)
        for n in notifications:
            app.mapper.to_domain_event(n)
        count += len(notifications)
        if len(notifications) < page:
            break
        position = notifications[-1].id
    return count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()
    console = Console()
    with bench_database() as url:
        settings = Settings(database_url=url, jwt_secret="bench")  # type: ignore[arg-type]
        app = build_application(settings, url)
        read_side = build_read_side(settings, url)
        read_side.ensure()
        t0 = time.perf_counter()
        write_fixture(app, args.events, console)
        console.print(f"fixture: {args.events:,} events in {time.perf_counter() - t0:.1f}s")
        raw_count, raw_seconds = raw_read_decode(app)
        result = rebuild(read_side, "todos", batch_size=args.batch_size)
        raw_rate = raw_count / raw_seconds
        table = Table(title=f"rebuild of the todos view from {args.events:,} events (same run)")
        for col in ("what", "events", "seconds", "events/s", "ratio to raw"):
            table.add_column(col, justify="right")
        table.add_row("raw read + decode", f"{raw_count:,}", f"{raw_seconds:.1f}",
                      f"{raw_rate:,.0f}", "1.00x")
        table.add_row("rebuild todos view", f"{result.events:,}", f"{result.seconds:.1f}",
                      f"{result.events_per_second:,.0f}",
                      f"{result.events_per_second / raw_rate:.2f}x")
        console.print(table)
        app.close()


if __name__ == "__main__":
    main()
