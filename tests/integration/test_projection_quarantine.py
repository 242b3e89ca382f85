"""Quarantine (issue #9): a bad event stops neither a projection nor anyone else's reads.

Bad events are INSERTed raw into the event store (as an old bug, a console session or a
future release could), then the projections run as they do in production.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import ProgrammingError, StoredEvent, Tracking
from eventsourcing.utils import clear_topic_cache, register_topic
from fastapi.testclient import TestClient

from tests.conftest import PROBLEM, api_for, wait_until
from tododb.application import TodoApplication
from tododb.domain import Todo, TodoList, inbox_id
from tododb.domain.ordering import creation_key
from tododb.entrypoints.bootstrap import build_application, build_read_side
from tododb.infra.settings import Settings
from tododb.projections.rebuild import rebuild
from tododb.projections.registry import KINDS, ReadSide
from tododb.projections.rows import TodoRow
from tododb.projections.worker import run_all

RENAMED = "tododb.domain.todo:Todo.Renamed"
"""A topic no class answers to: a renamed class, or an event of a future release."""

Auth = Callable[..., dict[str, str]]


@dataclass
class Log:
    """A database of one's own: its URL, the application and the read side on it."""

    url: str
    app: TodoApplication
    side: ReadSide


@dataclass
class World(Log):
    client: TestClient
    admin: dict[str, str]


@pytest.fixture
def own_log(fresh_database_url: str, settings: Settings) -> Iterator[Log]:
    s = settings.model_copy(update={"database_url": fresh_database_url})
    app = build_application(s, fresh_database_url)
    side = build_read_side(s, fresh_database_url)
    side.ensure()
    yield Log(fresh_database_url, app, side)
    app.close()


@pytest.fixture
def world(own_log: Log, settings: Settings, auth: Auth) -> Iterator[World]:
    """The projections running in this process, and the API, on a log of its own."""
    stop = threading.Event()
    worker = threading.Thread(target=run_all, args=(own_log.side, stop), daemon=True)
    worker.start()
    s = settings.model_copy(update={"database_url": own_log.url})
    try:
        with TestClient(api_for(s, own_log.app, own_log.side, close_on_shutdown=False)) as c:
            yield World(**vars(own_log), client=c, admin=auth("ops", admin=True))
    finally:
        stop.set()
        worker.join(timeout=30)


def insert_raw(url: str, stored: list[StoredEvent]) -> list[int]:
    """INSERT stored events as they are, bypassing the application; their positions."""
    sql = (
        "INSERT INTO todos_events (originator_id, originator_version, topic, state) "
        "VALUES (%s, %s, %s, %s) RETURNING notification_id"
    )
    with psycopg.connect(url) as conn:
        rows = [
            conn.execute(sql, (s.originator_id, s.originator_version, s.topic, s.state)).fetchone()
            for s in stored
        ]
        conn.execute("NOTIFY todos_events")  # what the library's recorder does on insert
    return [r[0] for r in rows if r]


def stored(app: TodoApplication, todo: Todo) -> list[StoredEvent]:
    return [app.mapper.to_stored_event(e) for e in todo.collect_events()]


def new_todo(owner: str, title: str, *, completed: bool = False) -> Todo:
    """Created through the aggregate's private constructor: no validation, as an old bug."""
    todo_id = uuid4()
    todo = Todo._create(
        Todo.Created,
        id=todo_id,
        owner=owner,
        title=title,
        description="",
        due=None,
        priority="normal",
        tags=[],
        list_id=inbox_id(owner),
        order_key=creation_key(datetime.now(UTC), todo_id),
        actor=owner,
        assignee=None,
        recurrence=None,
    )
    if completed:
        todo.complete()
    return todo


def renamed(event: StoredEvent) -> StoredEvent:
    """The same event stored under a topic that does not resolve."""
    return StoredEvent(event.originator_id, event.originator_version, RENAMED, event.state)


def caught_up(log: Log) -> bool:
    head = log.app.head_position()
    return all(log.side.position(k) >= head for k in KINDS)


def settle(log: Log) -> None:
    wait_until(lambda: caught_up(log), timeout=60, what="the projections to reach the head")


def rows(log: Log, table: str = "todos") -> dict[UUID, dict[str, Any]]:
    with log.side.connect() as conn:
        found = conn.execute(f"SELECT * FROM {log.side.schema}.{table}").fetchall()
    return {r["id"]: r for r in found}


def quarantine(w: World, kind: str = "todos") -> list[dict[str, Any]]:
    r = w.client.get(f"/v1/admin/projections/{kind}/quarantine", headers=w.admin)
    assert r.status_code == 200, r.text
    listed: list[dict[str, Any]] = r.json()
    return listed


def resolve(w: World, todo_id: UUID, action: str, kind: str = "todos") -> Any:
    return w.client.post(
        f"/v1/admin/projections/{kind}/quarantine/{todo_id}/{action}", headers=w.admin
    )


def good_traffic(log: Log, owner: str, n: int = 3) -> list[UUID]:
    ids = [log.app.create_todo(owner, title=f"good {i}").todo.id for i in range(n)]
    log.app.complete_todo(owner, ids[0])
    return ids


def stored_todo(app: TodoApplication, todo_id: UUID) -> Todo:
    todo = app.repository.get(todo_id)
    assert isinstance(todo, Todo)
    return todo


def test_a_nul_title_is_quarantined_and_everyone_else_reads_on(world: World, auth: Auth) -> None:
    w = world
    before = good_traffic(w, "alice")
    bad = new_todo("mallory", "bad\x00title", completed=True)
    bad_positions = insert_raw(w.url, stored(w.app, bad))
    created = w.client.post("/v1/todos", json={"title": "after"}, headers=auth("bob"))
    settle(w)
    mine = {"X-Min-Position": created.headers["X-Position"], **auth("bob")}
    listed = w.client.get("/v1/todos", headers=mine).json()["items"]
    assert [t["title"] for t in listed] == ["after"]
    assert w.client.get("/v1/stats", headers=mine).json()["total"] == 1
    assert set(rows(w)) == {*before, UUID(created.json()["id"])}
    assert bad.id not in rows(w, "stats_todos")
    for kind in KINDS:
        [q] = quarantine(w, kind)
        assert q["todo_id"] == str(bad.id)
        assert (q["version"], q["position"], q["held"]) == (1, bad_positions[0], 1)
        assert q["topic"] == "tododb.domain.todo:Todo.Created"
        assert "NUL" in q["error"]


def test_a_title_psycopg_cannot_even_encode_is_quarantined_too(world: World) -> None:
    w = world
    [created] = stored(w.app, new_todo("mallory", "SURROGATE"))
    state = created.state.replace(b"SURROGATE", b"\\ud800")  # JSON for a lone surrogate
    bad = StoredEvent(created.originator_id, 1, created.topic, state)
    insert_raw(w.url, [bad])
    good_traffic(w, "alice")
    settle(w)
    [q] = quarantine(w)
    assert q["error"].startswith("UnicodeEncodeError")
    assert len(rows(w)) == 3


def test_status_and_the_metric_count_quarantined_todos(world: World) -> None:
    w = world
    insert_raw(w.url, stored(w.app, new_todo("mallory", "bad\x00")))
    good_traffic(w, "alice")
    settle(w)
    status = w.client.get("/v1/admin/projections", headers=w.admin).json()
    assert {s["name"]: s["quarantined"] for s in status} == {"todos": 1, "stats": 1}
    assert all(s["position"] == s["head"] for s in status)
    facade = w.client.app.state.services.projections  # type: ignore[attr-defined]
    assert facade.quarantined_counts() == {"todos": 1, "stats": 1}
    metrics = w.client.get("/metrics").text
    assert 'tododb_projection_quarantined{projection="todos"} 1.0' in metrics
    assert 'tododb_projection_quarantined{projection="stats"} 1.0' in metrics


def test_later_events_of_a_quarantined_todo_are_held_in_order(world: World) -> None:
    w = world
    bad = new_todo("mallory", "bad\x00", completed=True)
    [first, _] = insert_raw(w.url, stored(w.app, bad))
    bad.reopen()
    bad.complete()
    insert_raw(w.url, stored(w.app, bad))
    others = good_traffic(w, "alice")
    settle(w)
    [q] = quarantine(w)
    assert (q["position"], q["version"], q["held"]) == (first, 1, 3)
    assert set(rows(w)) == set(others)


def test_an_event_whose_topic_does_not_resolve_is_quarantined_not_a_crash(world: World) -> None:
    w = world
    todo = new_todo("carol", "fine")
    todo.change_title("renamed by a future release")
    first, second = stored(w.app, todo)
    insert_raw(w.url, [first, renamed(second)])
    others = good_traffic(w, "dave")
    settle(w)
    [q] = quarantine(w)
    assert (q["todo_id"], q["version"], q["topic"], q["held"]) == (str(todo.id), 2, RENAMED, 0)
    assert q["error"].startswith("TopicError")
    row = rows(w)[todo.id]
    assert (row["title"], row["version"]) == ("fine", 1)
    assert set(others) <= set(rows(w))


def test_skip_records_the_bad_event_and_applies_the_ones_held_behind_it(world: World) -> None:
    w = world
    todo = stored_todo(w.app, w.app.create_todo("erin", title="ok").todo.id)
    todo._title_changed(title="broken\x00", actor="erin")  # no validation, as an old bug
    todo.complete()
    insert_raw(w.url, stored(w.app, todo))
    settle(w)
    assert [(q["version"], q["held"]) for q in quarantine(w)] == [(2, 1)]
    done = resolve(w, todo.id, "skip")
    assert done.status_code == 200, done.text
    assert done.json() == {
        "todo_id": str(todo.id),
        "released": True,
        "applied": 1,
        "quarantined": None,
    }
    row = rows(w)[todo.id]
    assert (row["title"], row["status"], row["version"]) == ("ok", "completed", 3)
    assert quarantine(w) == []
    with w.side.connect() as conn:  # recorded, not deleted
        kept = conn.execute(
            "SELECT version, status FROM readmodels.todos_g1_quarantine WHERE todo_id = %s",
            (todo.id,),
        ).fetchall()
    assert kept == [{"version": 2, "status": "skipped"}]
    assert resolve(w, todo.id, "skip", "stats").json()["released"]  # each view its own
    assert rows(w, "stats_todos")[todo.id]["status"] == "completed"


def test_a_bad_list_event_quarantines_that_list_alone(world: World, auth: Auth) -> None:
    """A list is an aggregate like a todo: its bad event holds its later ones, while its
    todos and everyone else's lists flow on; a skip applies what was held."""
    w = world
    shared = w.app.create_list("lena", "Groceries").todo_list
    todo = w.app.create_todo("lena", title="milk", list_id=shared.id).todo
    todo_list = w.app.repository.get(shared.id)
    assert isinstance(todo_list, TodoList)
    todo_list._renamed(name="bad\x00name", actor="lena")  # no validation, as an old bug
    todo_list.set_member("max", "editor", actor="lena")
    insert_raw(w.url, [w.app.mapper.to_stored_event(e) for e in todo_list.collect_events()])
    other = w.app.create_list("olaf", "Elsewhere").todo_list
    settle(w)
    for kind in KINDS:
        assert [(q["todo_id"], q["version"], q["held"]) for q in quarantine(w, kind)] == [
            (str(shared.id), 2, 1)
        ]
    lists = rows(w, "lists")
    assert (lists[shared.id]["name"], lists[shared.id]["version"]) == ("Groceries", 1)
    assert lists[other.id]["name"] == "Elsewhere"
    assert w.client.get(f"/v1/todos/{todo.id}", headers=auth("lena")).status_code == 200
    assert w.client.get(f"/v1/todos/{todo.id}", headers=auth("max")).status_code == 404
    for kind in KINDS:
        assert resolve(w, shared.id, "skip", kind).json()["released"]
    assert rows(w, "lists")[shared.id]["version"] == 3
    assert w.client.get(f"/v1/todos/{todo.id}", headers=auth("max")).status_code == 200
    max_lists = w.client.get("/v1/lists", headers=auth("max")).json()["items"]
    assert [(x["name"], x["role"]) for x in max_lists] == [
        ("Inbox", "owner"),
        ("Groceries", "editor"),
    ]


def test_retry_and_skip_are_for_admins_and_answer_problems(world: World, auth: Auth) -> None:
    w = world
    todo = new_todo("erin", "bad\x00")
    insert_raw(w.url, stored(w.app, todo))
    settle(w)
    url = f"/v1/admin/projections/todos/quarantine/{todo.id}"
    assert w.client.post(f"{url}/skip", headers=auth("erin")).status_code == 403
    assert w.client.get("/v1/admin/projections/todos/quarantine").status_code == 401
    assert resolve(w, todo.id, "skip").json()["released"]
    for action in ("retry", "skip"):
        for r, code in ((resolve(w, todo.id, action), 409), (resolve(w, uuid4(), action), 404)):
            assert (r.status_code, r.headers["content-type"]) == (code, PROBLEM)
        assert resolve(w, todo.id, action, kind="nope").status_code == 404
    assert w.client.get("/v1/admin/projections/nope/quarantine", headers=w.admin).status_code == 404


def test_skipping_a_created_event_quarantines_the_events_behind_it_in_turn(world: World) -> None:
    w = world
    bad = new_todo("frank", "bad\x00", completed=True)
    positions = insert_raw(w.url, stored(w.app, bad))
    settle(w)
    done = resolve(w, bad.id, "skip")
    assert done.status_code == 200, done.text
    assert (done.json()["released"], done.json()["applied"]) == (False, 0)
    head = done.json()["quarantined"]
    assert (head["version"], head["position"], head["held"]) == (2, positions[1], 0)
    assert head["error"].startswith("MissingRow")
    assert "skipped" in head["error"]
    assert quarantine(w) == [head]
    assert bad.id not in rows(w)


def test_retry_after_a_fix_releases_the_todo_and_its_view_is_exact(world: World) -> None:
    w = world
    todo = stored_todo(w.app, w.app.create_todo("gina", title="before").todo.id)
    todo.change_title("after the rename")
    todo.complete()
    title_changed, completed = stored(w.app, todo)
    insert_raw(w.url, [renamed(title_changed), completed])
    settle(w)
    still = resolve(w, todo.id, "retry").json()  # not fixed yet: the same head again
    assert (still["released"], still["applied"], still["quarantined"]["version"]) == (False, 0, 2)
    register_topic(RENAMED, Todo.TitleChanged)  # the fix: the old topic resolves again
    try:
        done = resolve(w, todo.id, "retry").json()
        assert (done["released"], done["applied"]) == (True, 2)
        row = TodoRow.from_record(rows(w)[todo.id])
        assert row == TodoRow.from_aggregate(stored_todo(w.app, todo.id), row.position)
        assert (row.title, row.status, row.version) == ("after the rename", "completed", 3)
        assert quarantine(w) == []
        w.app.reopen_todo("gina", todo.id)  # the released todo flows on, live
        wait_until(lambda: rows(w)[todo.id]["version"] == 4, what="the next event to apply")
    finally:
        clear_topic_cache()  # the registration is this test's alone


def test_a_rebuild_completes_with_the_same_quarantine(world: World) -> None:
    w = world
    good_traffic(w, "hank", 40)
    insert_raw(w.url, stored(w.app, new_todo("ivan", "bad\x00", completed=True)))
    good_traffic(w, "hank", 40)
    settle(w)
    live = {t: rows(w, t) for t in ("todos", "stats_todos")}
    expected = [{**q, "quarantined_at": None} for q in quarantine(w)]
    # The catch-up in log order, the partitioned replay, and one batch loaded by COPY.
    for partitions, batch_size in ((1, 3), (2, 3), (1, 5000)):
        result = rebuild(w.side, "todos", batch_size=batch_size, partitions=partitions)
        assert w.side.active_generation("todos") == result.generation
        assert rows(w) == live["todos"]
        assert [{**q, "quarantined_at": None} for q in quarantine(w)] == expected
    rebuild(w.side, "stats", batch_size=4)
    assert rows(w, "stats_todos") == live["stats_todos"]
    assert len(quarantine(w, "stats")) == 1


def test_a_database_error_that_is_not_the_events_fails_instead_of_quarantining(
    own_log: Log,
) -> None:
    log = own_log
    view = log.side.open_view("todos", 1)
    events = [(log.app.mapper.to_domain_event(s), 1) for s in stored(log.app, new_todo("j", "x"))]
    try:
        with log.side.connect() as conn:
            conn.execute("ALTER TABLE readmodels.todos_g1 RENAME TO todos_g1_gone")
        try:
            with pytest.raises(ProgrammingError):
                view.apply(events[:1], Tracking("todos", 1))
        finally:
            with log.side.connect() as conn:
                conn.execute("ALTER TABLE readmodels.todos_g1_gone RENAME TO todos_g1")
        assert view.quarantined() == []
        assert log.side.position("todos") == 0
    finally:
        view.datastore.close()


def cli(url: str, *args: str, code: int = 0) -> str:
    """`todo projections ARGS` in a process of its own; its output, checked for ``code``."""
    done = subprocess.run(
        [sys.executable, "-m", "tododb.entrypoints.cli", "projections", *args],
        env={**os.environ, "DATABASE_URL": url, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code, done.stdout + done.stderr
    return done.stdout


def test_the_worker_process_keeps_going_past_bad_events(own_log: Log) -> None:
    log = own_log
    env = {**os.environ, "DATABASE_URL": log.url, "TODO_LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tododb.entrypoints.cli", "projections", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        good_traffic(log, "kim")
        bad = new_todo("leo", "bad\x00")
        unknown = new_todo("leo", "renamed later")
        unknown.change_title("x")
        first, second = stored(log.app, unknown)
        insert_raw(log.url, [*stored(log.app, bad), first, renamed(second)])
        good_traffic(log, "kim")
        settle(log)
        assert worker.poll() is None
        assert len(rows(log)) == 7
        status = cli(log.url, "status")
        lines = {line.split("│")[1].strip(): line for line in status.splitlines() if "│" in line}
        assert lines["todos"].rstrip(" │").endswith(" 2")
        assert "running" in lines["todos"]
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


def test_cli_lists_retries_and_skips(own_log: Log) -> None:
    log = own_log
    bad = new_todo("mo", "bad\x00", completed=True)
    insert_raw(log.url, stored(log.app, bad))
    view = log.side.open_view("todos", 1)
    try:  # what a worker would do, without one
        notifications = log.app.recorder.select_notifications(start=1, limit=10)
        pairs = [(log.app.mapper.to_domain_event(n), n.id) for n in notifications]
        view.apply(pairs, Tracking("todos", notifications[-1].id))
    finally:
        view.datastore.close()
    listed = cli(log.url, "quarantine", "todos")
    assert str(bad.id) in listed
    assert "NUL" in listed
    assert "still quarantined at version 1" in cli(log.url, "retry", "todos", str(bad.id), code=2)
    assert "still quarantined at version 2" in cli(log.url, "skip", "todos", str(bad.id), code=2)
    assert "released" in cli(log.url, "skip", "todos", str(bad.id))
    assert "no quarantined event" in cli(log.url, "skip", "todos", str(bad.id), code=1)
    assert str(bad.id) not in cli(log.url, "quarantine", "todos")
