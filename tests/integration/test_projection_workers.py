"""Projection workers and rebuilds: exactly-once through crashes, standby, replay equivalence."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from tests.conftest import wait_until
from tododb.application import TodoApplication, TodoGone
from tododb.domain import Todo
from tododb.entrypoints.bootstrap import build_application, build_read_side
from tododb.infra.settings import Settings
from tododb.projections.rebuild import rebuild
from tododb.projections.registry import ReadSide
from tododb.projections.rows import TodoRow


def random_commands(app: TodoApplication, n: int, seed: int, users: int = 3) -> None:
    rng = random.Random(seed)
    ids: list[tuple[str, Any]] = []
    for _ in range(n):
        if not ids or rng.random() < 0.3:
            owner = f"mix-{seed}-{rng.randrange(users)}"
            due = None if rng.random() < 0.5 else f"2030-0{rng.randrange(1, 9)}-01T00:00:00+00:00"
            from datetime import datetime

            r = app.create_todo(
                owner,
                title=f"t{rng.random():.6f}",
                tags=rng.sample(["a", "b", "c", "d"], rng.randrange(3)),
                due=datetime.fromisoformat(due) if due else None,
            )
            ids.append((owner, r.todo.id))
            continue
        owner, todo_id = rng.choice(ids)
        action = rng.randrange(6)
        try:
            if action == 0:
                app.complete_todo(owner, todo_id)
            elif action == 1:
                app.reopen_todo(owner, todo_id)
            elif action == 2:
                app.update_todo(owner, todo_id, {"title": f"renamed {rng.random():.5f}"})
            elif action == 3:
                app.update_todo(owner, todo_id, {"priority": rng.choice(["low", "normal", "high"])})
            elif action == 4:
                app.update_todo(owner, todo_id, {"due": None, "tags": ["x"]})
            elif rng.random() < 0.3:
                app.delete_todo(owner, todo_id)
        except TodoGone:  # commands on deleted todos are refused; that's part of the mix
            pass


def view_rows(read_side: ReadSide, table: str) -> list[dict[str, Any]]:
    with read_side.connect() as conn:
        return conn.execute(f"SELECT * FROM {read_side.schema}.{table} ORDER BY 1").fetchall()


def truth(app: TodoApplication, read_side: ReadSide) -> dict[Any, TodoRow]:
    """Every todo's row as the event store says, via the aggregates."""
    rows = {}
    for r in view_rows(read_side, "todos"):
        todo = app.repository.get(r["id"])
        assert isinstance(todo, Todo)
        rows[r["id"]] = TodoRow.from_aggregate(todo, r["position"])
    return rows


def caught_up(app: TodoApplication, read_side: ReadSide) -> bool:
    head = app.head_position()
    return all(read_side.position(k) >= head for k in ("todos", "stats"))


def test_rebuild_is_equivalent_to_the_live_view(
    todo_app: TodoApplication, read_side: ReadSide, projection_worker: threading.Event
) -> None:
    random_commands(todo_app, 300, seed=7)
    wait_until(lambda: caught_up(todo_app, read_side), what="live projections to catch up")
    live = {t: view_rows(read_side, t) for t in ("todos", "stats_todos", "stats_users")}
    with read_side.connect() as conn:
        row = conn.execute("SELECT count(*) AS n FROM todos_events").fetchone()
    assert row is not None
    stored_events = row["n"]
    for partitions in (1, 2):  # in order in one process, and split across processes
        for kind in ("todos", "stats"):
            result = rebuild(read_side, kind, batch_size=37, partitions=partitions)
            assert result.events == stored_events  # ids have gaps: lost races burn them
            assert read_side.active_generation(kind) == result.generation
        rebuilt = {t: view_rows(read_side, t) for t in ("todos", "stats_todos", "stats_users")}
        assert rebuilt == live, f"rebuild with {partitions} partition(s) differs"
    expected = truth(todo_app, read_side)
    assert {r["id"]: TodoRow.from_record(r) for r in rebuilt["todos"]} == expected
    totals = {}
    for row in expected.values():
        if not row.deleted:
            t = totals.setdefault(row.owner, [0, 0, 0])
            t[0 if row.status == "open" else 1] += 1
            t[2] += 1
    assert {
        u["owner"]: [u["open"], u["completed"], u["total"]]
        for u in rebuilt["stats_users"]
        if u["total"] or u["open"] or u["completed"]
    } == totals


def test_admin_rebuild_runs_in_the_background_while_queries_are_served(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    user, admin = auth("admin-watcher"), auth("root", admin=True)
    created = client.post("/v1/todos", json={"title": "still here"}, headers=user)
    assert client.get("/v1/admin/projections", headers=user).status_code == 403
    assert client.post("/v1/admin/projections/todos/rebuild", headers=user).status_code == 403
    assert client.post("/v1/admin/projections/nope/rebuild", headers=admin).status_code == 404
    status = client.get("/v1/admin/projections", headers=admin).json()
    assert {s["name"] for s in status} == {"todos", "stats"}
    assert all(s["state"] == "running" and s["head"] >= s["position"] for s in status)
    before = client.get("/v1/admin/projections", headers=admin).json()
    gen_before = {s["name"]: s["generation"] for s in before}["todos"]
    started = client.post("/v1/admin/projections/todos/rebuild", headers=admin)
    assert started.status_code == 202
    location = started.headers["Location"]
    min_pos = {"X-Min-Position": created.headers["X-Position"], **user}
    listing = client.get("/v1/todos", headers=min_pos)
    assert listing.status_code == 200  # served from the old generation meanwhile

    def finished() -> bool:
        return client.get(location, headers=admin).json()["status"] in ("completed", "failed")

    wait_until(finished, what="the rebuild to finish")
    done = client.get(location, headers=admin).json()
    assert done["status"] == "completed", done
    assert done["position"] >= int(created.headers["X-Position"])
    after = {s["name"]: s for s in client.get("/v1/admin/projections", headers=admin).json()}
    assert after["todos"]["generation"] == done["generation"] > gen_before
    titles = [t["title"] for t in client.get("/v1/todos", headers=min_pos).json()["items"]]
    assert titles == ["still here"]


@pytest.fixture
def isolated(
    fresh_database_url: str, settings: Settings
) -> Iterator[tuple[str, TodoApplication, ReadSide]]:
    s = settings.model_copy(update={"database_url": fresh_database_url})
    app = build_application(s, fresh_database_url)
    side = build_read_side(s, fresh_database_url)
    side.ensure()
    yield fresh_database_url, app, side
    app.close()


def start_worker(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "TODO_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "tododb.entrypoints.cli", "projections", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def lock_held(url: str, name: str) -> bool:
    from tododb.infra.leadership import lock_holders

    with psycopg.connect(url, row_factory=dict_row) as conn:
        return lock_holders(conn, name) == 1


def backlog(app: TodoApplication, todos: int, seed: int) -> None:
    """Many events at once (through the recorder in batches), so a worker has work queued."""
    stored = []
    for i in range(todos):
        todo = Todo.create(owner=f"backlog-{seed}-{i % 7}", title=f"b{i}", tags=["x"])
        todo.change_title(f"b{i}!")
        if i % 3:
            todo.complete()
        stored += [app.mapper.to_stored_event(e) for e in todo.collect_events()]
        if len(stored) >= 900:
            app.recorder.insert_events(stored)
            stored = []
    if stored:
        app.recorder.insert_events(stored)


def test_worker_killed_mid_stream_leaves_the_view_exactly_right(
    isolated: tuple[str, TodoApplication, ReadSide],
) -> None:
    url, app, side = isolated
    kills_while_behind = 0
    for round_ in range(4):
        backlog(app, 3000, seed=round_)  # queued while no worker runs
        random_commands(app, 60, seed=round_)  # and some ordinary traffic
        worker = start_worker(url)
        started_at = side.position("todos")
        wait_until(lambda: side.position("todos") > started_at, what="the worker to start applying")
        behind = side.position("todos") < app.head_position()
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        kills_while_behind += behind
    assert kills_while_behind >= 2, "kills did not land while the worker had events to apply"
    worker = start_worker(url)
    try:
        wait_until(
            lambda: caught_up(app, side), timeout=60, what="the restarted worker to catch up"
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    rows = {r["id"]: TodoRow.from_record(r) for r in view_rows(side, "todos")}
    assert rows == truth(app, side)
    with side.connect() as conn:
        count = conn.execute(
            "SELECT count(DISTINCT originator_id) AS n FROM todos_events"
        ).fetchone()
    assert count is not None
    assert len(rows) == count["n"] > 12_000
    stats = {
        r["owner"]: (r["open"], r["completed"], r["total"]) for r in view_rows(side, "stats_users")
    }
    expected: dict[str, list[int]] = {}
    for row in rows.values():
        if not row.deleted:
            e = expected.setdefault(row.owner, [0, 0, 0])
            e[0 if row.status == "open" else 1] += 1
            e[2] += 1
    assert {o: v for o, v in stats.items() if any(v)} == {o: tuple(v) for o, v in expected.items()}


def test_a_standby_worker_takes_over_when_the_active_one_dies(
    isolated: tuple[str, TodoApplication, ReadSide],
) -> None:
    url, app, side = isolated
    active = start_worker(url)
    try:
        wait_until(lambda: lock_held(url, "projection:todos"), what="a worker to become active")
        standby = start_worker(url)
        try:
            app.create_todo("standby-user", title="before")
            wait_until(lambda: caught_up(app, side), what="the active worker")
            active.send_signal(signal.SIGKILL)
            active.wait()
            app.create_todo("standby-user", title="after")
            wait_until(lambda: caught_up(app, side), timeout=30, what="the standby to take over")
            titles = sorted(r["title"] for r in view_rows(side, "todos"))
            assert titles == ["after", "before"]
            assert standby.poll() is None
        finally:
            standby.send_signal(signal.SIGTERM)
            assert standby.wait(timeout=30) == 0
    finally:
        if active.poll() is None:
            active.kill()
            active.wait()


def test_cli_status_and_rebuild(isolated: tuple[str, TodoApplication, ReadSide]) -> None:
    url, app, side = isolated
    for i in range(5):
        app.create_todo("cli-user", title=f"t{i}")
    env = {**os.environ, "DATABASE_URL": url, "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "tododb.entrypoints.cli", "projections", "rebuild", "todos"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "generation 2 is live at position 5" in out
    status = subprocess.run(
        [sys.executable, "-m", "tododb.entrypoints.cli", "projections", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = {line.split("│")[1].strip(): line for line in status.splitlines() if "│" in line}
    assert "stopped" in lines["todos"]
    assert " 5 " in lines["todos"]
    assert "stopped" in lines["stats"]
    assert len(view_rows(side, "todos")) == 5


def test_an_event_is_never_applied_twice(isolated: tuple[str, TodoApplication, ReadSide]) -> None:
    from eventsourcing.persistence import DatabaseError, Tracking

    _, app, side = isolated
    result = app.create_todo("twice", title="once")
    app.complete_todo("twice", result.todo.id)
    view = side.open_view("todos", side.active_generation("todos"))
    try:
        notifications = app.recorder.select_notifications(start=1, limit=10)
        events = [(app.mapper.to_domain_event(n), n.id) for n in notifications]
        view.apply(events, Tracking("todos", events[-1][1]))
        before = view_rows(side, "todos")
        with pytest.raises(DatabaseError):  # the same position again: refused, nothing changes
            view.apply(events[-1:], Tracking("todos", events[-1][1]))
        with pytest.raises(DatabaseError):  # and so is going back
            view.apply(events[:1], Tracking("todos", events[0][1]))
        assert view_rows(side, "todos") == before
        assert side.position("todos") == events[-1][1]
    finally:
        view.datastore.close()
