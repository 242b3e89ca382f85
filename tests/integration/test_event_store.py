"""The event store itself: append-only in the database, optimistic concurrency, upcasting."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import RecordConflictError
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.utils import get_topic
from fastapi.testclient import TestClient

from tododb.application import TodoApplication
from tododb.domain import Todo
from tododb.entrypoints.bootstrap import build_application
from tododb.infra.settings import Settings


def test_update_delete_and_truncate_are_rejected_by_the_database(
    todo_app: TodoApplication, database_url: str
) -> None:
    todo_app.create_todo("append-only-user", title="history")
    with psycopg.connect(database_url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM todos_events").fetchone()
        for statement in (
            "UPDATE todos_events SET topic = 'x'",
            "DELETE FROM todos_events",
            "TRUNCATE todos_events",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM todos_events").fetchone() == before


def test_two_writers_racing_on_one_version_cannot_both_win(todo_app: TodoApplication) -> None:
    result = todo_app.create_todo("racer", title="race")
    first = todo_app.repository.get(result.todo.id)
    second = todo_app.repository.get(result.todo.id)
    assert isinstance(first, Todo)
    assert isinstance(second, Todo)
    first.change_title("first wins")
    second.change_title("second loses")
    todo_app.save(first)
    with pytest.raises(RecordConflictError):
        todo_app.save(second)
    stored = todo_app.get_todo("racer", result.todo.id)
    assert (stored.title, stored.version) == ("first wins", 2)


def race(n: int, command: Callable[[int], int]) -> list[int]:
    """Run ``command(i)`` for i < n in threads released together; their status codes."""
    barrier = threading.Barrier(n)
    statuses: list[int] = []

    def writer(i: int) -> None:
        barrier.wait()
        statuses.append(command(i))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_concurrent_commands_without_if_match_are_all_applied_in_distinct_versions(
    client: TestClient, headers: dict[str, str]
) -> None:
    todo = client.post("/v1/todos", json={"title": "t"}, headers=headers).json()
    url = f"/v1/todos/{todo['id']}"
    n = 12
    statuses = race(
        n, lambda i: client.patch(url, json={"title": f"title {i}"}, headers=headers).status_code
    )
    assert statuses == [200] * n
    events = client.get(f"{url}/events", headers=headers).json()
    assert [e["version"] for e in events] == list(range(1, n + 2))


def test_concurrent_commands_with_the_same_if_match_have_exactly_one_winner(
    client: TestClient, headers: dict[str, str]
) -> None:
    todo = client.post("/v1/todos", json={"title": "t"}, headers=headers).json()
    url = f"/v1/todos/{todo['id']}"
    n = 8
    pinned = {"If-Match": '"1"', **headers}
    statuses = race(
        n, lambda i: client.patch(url, json={"title": f"title {i}"}, headers=pinned).status_code
    )
    assert sorted(statuses) == [200] + [412] * (n - 1)
    events = client.get(f"{url}/events", headers=headers).json()
    assert [e["version"] for e in events] == [1, 2]


def test_a_stored_v1_created_event_is_read_as_v2(
    todo_app: TodoApplication,
    database_url: str,
    client: TestClient,
    auth: Callable[..., dict[str, str]],
) -> None:
    todo_id = uuid4()
    state = json.dumps(
        {
            "timestamp": {"_type_": "datetime_iso", "_data_": "2025-06-01T08:00:00+00:00"},
            "originator_topic": get_topic(Todo),
            "owner": "legacy-user",
            "title": "Written by release 1",
            "description": "",
            "due": None,
            "tags": ["old"],
        }
    ).encode()
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO todos_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, 1, %s, %s) RETURNING notification_id",
            (todo_id, get_topic(Todo.Created), state),
        ).fetchone()
        conn.execute("NOTIFY todos_events")  # what the library's recorder does on insert
    assert row is not None
    legacy = {"X-Min-Position": str(row[0]), **auth("legacy-user")}
    r = client.get(f"/v1/todos/{todo_id}", headers=legacy)
    assert r.status_code == 200, r.text
    assert r.json()["priority"] == "normal"
    assert r.json()["created_at"] == "2025-06-01T08:00:00Z"
    from_store = client.get(f"/v1/todos/{todo_id}?as_of_version=1", headers=legacy)
    assert from_store.json() == r.json()
    # and it can still be changed, appending a current-version event after the old one
    done = client.post(f"/v1/todos/{todo_id}/complete", headers=auth("legacy-user"))
    assert done.json()["version"] == 2


def test_database_loss_is_503_not_500(
    server_url: str, settings: object, auth: Callable[..., dict[str, str]]
) -> None:
    from tests.conftest import api_for, create_database, drop_database
    from tododb.entrypoints.bootstrap import build_application, build_read_side
    from tododb.infra.postgres import with_database
    from tododb.infra.settings import Settings

    assert isinstance(settings, Settings)
    name = create_database(server_url, "tododb_doomed")
    url = with_database(server_url, name)
    todo_app = build_application(
        settings.model_copy(update={"database_url": url, "db_connect_timeout": 1}), url
    )
    with TestClient(api_for(settings, todo_app, build_read_side(settings, url))) as c:
        assert c.get("/readyz").status_code == 200
        drop_database(server_url, name)
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/todos", json={"title": "lost?"}, headers=auth("u"))
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["Retry-After"]


def test_many_processes_starting_at_once_on_an_empty_database_all_set_up_the_store(
    settings: Settings, fresh_database_url: str
) -> None:
    """`todo dev` starts the API and every worker together, and each creates the schema.
    Two concurrent CREATE TYPE of one name fail with a unique violation (not the
    DuplicateObject the library expects), which once killed the API at start-up."""
    starters = 8
    barrier = threading.Barrier(starters)
    apps: list[TodoApplication] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            apps.append(build_application(settings, fresh_database_url))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len(apps) == starters
        result = apps[0].create_todo("u", title="stored once the schema is there")
        assert apps[-1].get_todo("u", result.todo.id).title == "stored once the schema is there"
    finally:
        for app in apps:
            app.close()


def test_select_events_answers_as_the_librarys_query_in_every_shape(
    todo_app: TodoApplication,
) -> None:
    """The recorder renders its query once per shape of the arguments; every shape reads
    what the library's own (composed per call) reads."""
    todo_id = todo_app.create_todo("shapes", title="v1").todo.id
    for i in range(2, 6):
        todo_app.update_todo("shapes", todo_id, {"title": f"v{i}"})
    recorder = todo_app.recorder
    library = PostgresAggregateRecorder.select_events.__get__(recorder)
    for gt, lte, desc, limit in itertools.product((None, 2), (None, 4), (False, True), (None, 2)):
        ours = recorder.select_events(todo_id, gt=gt, lte=lte, desc=desc, limit=limit)
        theirs = library(todo_id, gt=gt, lte=lte, desc=desc, limit=limit)
        assert ours == theirs, (gt, lte, desc, limit)
        assert ours, (gt, lte, desc, limit)
