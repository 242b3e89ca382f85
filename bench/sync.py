"""Delta sync for a big user: 10,000 todos, a token from one change ago, p50/p99.

    python bench/sync.py [--todos 10000] [--requests 300]

The user's todos go through the application layer, the projection worker runs in this
process; then the user takes a snapshot (all pages), one more command commits, and
``GET /v1/sync?token=...`` answers that one change, again and again (the token stays
one change behind): timed end to end through the API in process (TestClient), and the
delta query alone (``read_delta``: its SQL and the rules).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database, console, pct
from tododb.api.app import create_app
from tododb.api.auth import issue_token
from tododb.api.sync import read_delta
from tododb.entrypoints.bootstrap import (
    build_api_services,
    build_application,
    build_read_side,
    prepare_schemas,
)
from tododb.infra.settings import Settings
from tododb.projections.changes import ChangeQueries
from tododb.projections.worker import run_all

SECRET = "bench-sync-secret-bench-sync-secret"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--todos", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    out = console()
    with bench_database() as url:
        settings = Settings(  # type: ignore[call-arg]
            database_url=url, jwt_secret=SECRET, rate_limit_enabled=False
        )
        app = build_application(settings, url)
        read_side = build_read_side(settings, url)
        services = build_api_services(settings, app, read_side)
        prepare_schemas(services, read_side)
        stop = threading.Event()
        worker = threading.Thread(target=run_all, args=(read_side, stop), daemon=True)
        worker.start()
        user = "big-user"
        others = ["noise-a", "noise-b"]
        for i in range(args.todos):
            app.create_todo(user, title=f"todo {i}")
            if i % 10 == 0:
                app.create_todo(others[i % 2], title=f"noise {i}")
        head = app.head_position()
        while read_side.position("todos") < head:
            time.sleep(0.1)  # the projection catching up with the load, not a test wait
        headers = {"Authorization": f"Bearer {issue_token(SECRET, user, ttl_seconds=3600)}"}
        api = create_app(settings, services, close_on_shutdown=False)
        with TestClient(api) as client:
            token, pages, started = None, 0, time.perf_counter()
            while True:
                params = {"limit": 1000, **({"token": token} if token else {})}
                page = client.get("/v1/sync", headers=headers, params=params).json()
                token, pages = page["next_token"], pages + 1
                if not page["has_more"]:
                    break
            snapshot_seconds = time.perf_counter() - started
            todo = app.create_todo(user, title="one more")
            min_pos = {"X-Min-Position": str(todo.position)}
            http: list[float] = []
            for _ in range(args.requests):
                started = time.perf_counter()
                r = client.get("/v1/sync", headers={**headers, **min_pos}, params={"token": token})
                http.append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
                assert len(r.json()["items"]) == 1, r.text
            queries = ChangeQueries(read_side.schema)
            latest = client.get("/v1/sync", headers=headers, params={"token": token}).json()
            since = int(latest["position"]) - 1
            direct: list[float] = []
            for _ in range(args.requests):
                started = time.perf_counter()
                page2 = read_delta(queries, services.connect, user, since, None, 500)
                direct.append(time.perf_counter() - started)
                assert len(page2.changes) == 1
        stop.set()
        worker.join(timeout=30)
        app.close()
    table = Table(title=f"GET /v1/sync for a user with {args.todos:,} todos, token one change ago")
    for col in ("what", "samples", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right")
    for name, values in (("HTTP, in process", http), ("delta query alone", direct)):
        table.add_row(
            name,
            f"{len(values):,}",
            f"{pct(values, 50) * 1e3:.2f}",
            f"{pct(values, 99) * 1e3:.2f}",
            f"{max(values) * 1e3:.2f}",
        )
    out.print(table)
    out.print(f"snapshot: {pages} pages of 1,000 in {snapshot_seconds:.2f} s")


if __name__ == "__main__":
    main()
