"""Projection workers and rebuilds: exactly-once through crashes, standby, replay equivalence."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from tests.conftest import wait_until
from tododb.application import (
    Forbidden,
    ListNotFound,
    TodoApplication,
    TodoGone,
    TodoNotFound,
)
from tododb.domain import DomainError, Todo, TodoList, inbox_id
from tododb.entrypoints.bootstrap import build_application, build_read_side
from tododb.infra.settings import Settings
from tododb.projections.rebuild import rebuild
from tododb.projections.registry import ReadSide
from tododb.projections.rows import ListRow, TodoRow


def random_commands(app: TodoApplication, n: int, seed: int, users: int = 3) -> None:
    """A random mix of every command: todos in Inboxes and shared lists, members coming
    and going, moves between lists, steps, assignees, recurrence, deleted lists."""
    rng = random.Random(seed)
    people = [f"mix-{seed}-{k}" for k in range(users)]
    lists: dict[Any, str] = {}  # list id → its owner
    members: dict[Any, dict[str, str]] = {}
    todos: list[tuple[Any, Any]] = []  # (todo id, list id it was last put in)
    steps: dict[Any, list[Any]] = {}

    def editor_of(list_id: Any) -> str:
        editors = [u for u, r in members.get(list_id, {}).items() if r != "viewer"]
        return rng.choice(editors) if editors else people[0]

    def some_list(actor: str) -> Any:
        own = [k for k, m in members.items() if m.get(actor) in ("owner", "editor")]
        return rng.choice(own) if own and rng.random() < 0.6 else inbox_id(actor)

    for _ in range(n):
        actor = rng.choice(people)
        action = rng.randrange(20)
        try:
            if action == 0 or (action < 4 and not lists):
                created = app.create_list(actor, f"list {rng.random():.4f}")
                lists[created.todo_list.id] = actor
                members[created.todo_list.id] = {actor: "owner"}
            elif action < 3 and lists:
                list_id = rng.choice(list(lists))
                user = rng.choice(people)
                role = rng.choice(["editor", "viewer", "owner"])
                app.set_member(lists[list_id], list_id, user, role)
                members[list_id][user] = role
            elif action == 3 and lists:
                list_id = rng.choice(list(lists))
                user = rng.choice(list(members[list_id]))
                app.remove_member(user, list_id, user)  # leaving
                members[list_id].pop(user)
            elif action < 9 or not todos:
                list_id = some_list(actor)
                due = None
                if rng.random() < 0.5:
                    due = datetime(2030, rng.randrange(1, 9), 1, tzinfo=UTC)
                r = app.create_todo(
                    actor,
                    title=f"t{rng.random():.6f}",
                    list_id=list_id,
                    tags=rng.sample(["a", "b", "c", "d"], rng.randrange(3)),
                    due=due,
                    recurrence="FREQ=WEEKLY" if due and rng.random() < 0.3 else None,
                )
                todos.append((r.todo.id, list_id))
            elif action == 19 and lists and rng.random() < 0.3:
                list_id = rng.choice(list(lists))
                app.delete_list(lists[list_id], list_id, [t for t, in_ in todos if in_ == list_id])
                lists.pop(list_id)
                members.pop(list_id)
            else:
                todo_id, list_id = rng.choice(todos)
                editor = inbox_owner(list_id, people) or editor_of(list_id)
                _todo_command(app, rng, editor, todo_id, list_id, todos, steps, some_list, members)
        except (TodoGone, TodoNotFound, ListNotFound, Forbidden, DomainError):
            pass  # refused commands (deleted, not a member any more...) are part of the mix


def inbox_owner(list_id: Any, people: list[str]) -> str | None:
    return next((u for u in people if inbox_id(u) == list_id), None)


def _todo_command(
    app: TodoApplication,
    rng: random.Random,
    actor: str,
    todo_id: Any,
    list_id: Any,
    todos: list[tuple[Any, Any]],
    steps: dict[Any, list[Any]],
    some_list: Callable[[str], Any],
    members: dict[Any, dict[str, str]],
) -> None:
    action = rng.randrange(12)
    if action == 0:
        app.complete_todo(actor, todo_id)
    elif action == 1:
        app.reopen_todo(actor, todo_id)
    elif action == 2:
        app.update_todo(actor, todo_id, {"title": f"renamed {rng.random():.5f}"})
    elif action == 3:
        app.update_todo(actor, todo_id, {"priority": rng.choice(["low", "normal", "high"])})
    elif action == 4:
        app.update_todo(actor, todo_id, {"due": None, "recurrence": None, "tags": ["x"]})
    elif action == 5:
        target = some_list(actor)
        app.move_todo(actor, todo_id, list_id=target)
        todos.append((todo_id, target))
    elif action == 6:
        others = [t for t, in_ in todos if in_ == list_id and t != todo_id]
        app.move_todo(actor, todo_id, after=rng.choice(others) if others else None)
    elif action == 7:
        _, step_id = app.add_step(actor, todo_id, f"step {rng.random():.3f}")
        steps.setdefault(todo_id, []).append(step_id)
    elif action == 8 and steps.get(todo_id):
        app.update_step(
            actor, todo_id, rng.choice(steps[todo_id]), done=rng.random() < 0.7, index=0
        )
    elif action == 9 and steps.get(todo_id):
        app.remove_step(actor, todo_id, steps[todo_id].pop())
    elif action == 10:
        assignee = rng.choice([*members.get(list_id, {actor: "owner"}), None])
        app.update_todo(actor, todo_id, {"assignee": assignee})
    elif rng.random() < 0.3:
        app.delete_todo(actor, todo_id)


def view_rows(read_side: ReadSide, table: str) -> list[dict[str, Any]]:
    with read_side.connect() as conn:
        return conn.execute(f"SELECT * FROM {read_side.schema}.{table} ORDER BY 1, 2").fetchall()


TABLES = (
    "todos",
    "lists",
    "list_members",
    "list_departures",
    "todo_moves",
    "stats_todos",
    "stats_counts",
    "stats_lists",
    "stats_list_members",
)
"""Every stable view of both read models."""


def truth(app: TodoApplication, read_side: ReadSide) -> dict[Any, TodoRow]:
    """Every todo's row as the event store says, via the aggregates."""
    rows = {}
    for r in view_rows(read_side, "todos"):
        todo = app.repository.get(r["id"])
        assert isinstance(todo, Todo)
        rows[r["id"]] = TodoRow.from_aggregate(todo, r["position"])
    return rows


def list_truth(app: TodoApplication, read_side: ReadSide, prefix: str = "") -> dict[Any, ListRow]:
    """Every list's row (with its members) as the event store says."""
    members: dict[Any, dict[str, str]] = {}
    for m in view_rows(read_side, f"{prefix}list_members"):
        members.setdefault(m["list_id"], {})[m["user_id"]] = m["role"]
    rows = {}
    for r in view_rows(read_side, f"{prefix}lists"):
        todo_list = app.repository.get(r["id"])
        assert isinstance(todo_list, TodoList)
        rows[r["id"]] = ListRow.from_aggregate(todo_list, r["position"])
        assert ListRow.from_record(r, members.get(r["id"], {})) == rows[r["id"]]
    return rows


def expected_counts(rows: dict[Any, TodoRow]) -> dict[Any, tuple[int, int, int]]:
    """(open, completed, total) per list, from the todos' rows."""
    totals: dict[Any, list[int]] = {}
    for row in rows.values():
        if not row.deleted:
            t = totals.setdefault(row.list_id, [0, 0, 0])
            t[0 if row.status == "open" else 1] += 1
            t[2] += 1
    return {k: (v[0], v[1], v[2]) for k, v in totals.items()}


def counts(read_side: ReadSide) -> dict[Any, tuple[int, int, int]]:
    return {
        r["list_id"]: (r["open"], r["completed"], r["total"])
        for r in view_rows(read_side, "stats_counts")
        if r["open"] or r["completed"] or r["total"]
    }


def caught_up(app: TodoApplication, read_side: ReadSide) -> bool:
    head = app.head_position()
    return all(read_side.position(k) >= head for k in ("todos", "stats"))


def test_rebuild_is_equivalent_to_the_live_view(
    todo_app: TodoApplication, read_side: ReadSide, projection_worker: threading.Event
) -> None:
    random_commands(todo_app, 400, seed=7)
    wait_until(lambda: caught_up(todo_app, read_side), what="live projections to catch up")
    live = {t: view_rows(read_side, t) for t in TABLES}
    with read_side.connect() as conn:
        row = conn.execute("SELECT count(*) AS n FROM todos_events").fetchone()
    assert row is not None
    stored_events = row["n"]
    # In order in one process (in small batches, and in big ones through COPY), and
    # split across processes.
    for partitions, batch_size in ((1, 37), (2, 37), (1, 5000)):
        for kind in ("todos", "stats"):
            result = rebuild(read_side, kind, batch_size=batch_size, partitions=partitions)
            assert result.events == stored_events  # ids have gaps: lost races burn them
            assert read_side.active_generation(kind) == result.generation
        rebuilt = {t: view_rows(read_side, t) for t in TABLES}
        assert rebuilt == live, f"rebuild with {partitions} partition(s) differs"
    expected = truth(todo_app, read_side)
    rebuilt_rows = {r["id"]: TodoRow.from_record(r) for r in rebuilt["todos"]}
    assert rebuilt_rows == expected
    # The mix reached every new column, and every list aggregate's shape.
    mine = [r for r in expected.values() if r.owner.startswith("mix-7-")]
    assert any(r.steps for r in mine)
    assert any(r.assignee for r in mine)
    assert any(r.recurrence for r in mine)
    assert any(r.list_id != inbox_id(r.owner) for r in mine)
    lists = list_truth(todo_app, read_side)
    assert list_truth(todo_app, read_side, "stats_") == lists
    shared = [x for x in lists.values() if x.owner.startswith("mix-7-")]
    assert any(len(x.members) > 1 for x in shared)
    assert any(x.inbox for x in shared)
    assert counts(read_side) == expected_counts(expected)


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
            "SELECT count(DISTINCT originator_id) AS n FROM todos_events "
            "WHERE topic LIKE 'tododb.domain.todo:%%'"
        ).fetchone()
    assert count is not None
    assert len(rows) == count["n"] > 12_000
    assert counts(side) == expected_counts(rows)
    assert list_truth(app, side)  # the Inboxes random_commands made


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
    assert "generation 2 is live at position 6" in out  # 5 todos and the Inbox
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
    assert " 6 " in lines["todos"]
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


def test_a_generation_of_an_old_table_shape_is_replaced_and_replayed(
    isolated: tuple[str, TodoApplication, ReadSide],
) -> None:
    """Tables an earlier release made (no lists, no order keys) can be neither written nor
    read: the next start puts a new generation live, which the worker fills from the log."""
    from tododb.projections.worker import run_all

    _, app, side = isolated
    for i in range(3):
        app.create_todo("upgrader", title=f"u{i}")
    with side.connect() as conn:  # as release 10 left it: no order_key, no lists table
        conn.execute(f"ALTER TABLE {side.schema}.todos_g1 DROP COLUMN order_key CASCADE")
        conn.execute(f"DROP TABLE {side.schema}.stats_g1_lists CASCADE")
        conn.execute(f"CREATE VIEW {side.schema}.stats_users AS SELECT 1 AS owner")
    side.ensure()
    assert (side.active_generation("todos"), side.active_generation("stats")) == (2, 2)
    side.ensure()  # and only once
    assert (side.active_generation("todos"), side.active_generation("stats")) == (2, 2)
    stop = threading.Event()
    worker = threading.Thread(target=run_all, args=(side, stop), daemon=True)
    worker.start()
    try:
        wait_until(lambda: caught_up(app, side), what="the new generations to be replayed")
    finally:
        stop.set()
        worker.join(timeout=30)
    assert sorted(r["title"] for r in view_rows(side, "todos")) == ["u0", "u1", "u2"]
    assert counts(side) == {inbox_id("upgrader"): (3, 0, 3)}
    assert side.drop_generations_before("todos", 2) == [1]
    assert side.drop_generations_before("stats", 2) == [1]
