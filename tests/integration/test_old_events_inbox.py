"""Events stored before lists existed still read: their todos are in their owner's Inbox.

Raw rows of the old versions are INSERTed into PostgreSQL as earlier releases wrote them
(``Created`` v2 with no list, order, actor, assignee or recurrence, and a v1 one with no
priority either; ``TitleChanged``, ``Completed`` and ``Deleted`` v1 with no actor), then
read by the aggregate, by both projections and over HTTP. No Inbox aggregate is ever
made: an Inbox is its owner's by its id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
from eventsourcing.utils import get_topic
from fastapi.testclient import TestClient

from tests.conftest import wait_until
from tododb.application import TodoApplication
from tododb.domain import Todo, inbox_id
from tododb.domain.ordering import creation_key
from tododb.projections.registry import ReadSide

OWNER = f"legacy-{uuid4().hex[:8]}"
TODO = "tododb.domain.todo:Todo"


def instant(text: str) -> dict[str, str]:
    return {"_type_": "datetime_iso", "_data_": text}


def created_v2(at: str, title: str, *, due: str | None = None) -> dict[str, Any]:
    """What releases 2 to 10 wrote: a priority and ``class_version`` 2, no list."""
    return {
        "timestamp": instant(at),
        "originator_topic": get_topic(Todo),
        "owner": OWNER,
        "title": title,
        "description": "from before lists",
        "due": None if due is None else instant(due),
        "priority": "high",
        "tags": ["old"],
        "class_version": 2,
    }


def created_v1(at: str, title: str) -> dict[str, Any]:
    """What the first release wrote: no priority, no ``class_version``."""
    state = created_v2(at, title)
    del state["priority"], state["class_version"]
    return state


def v1(at: str, **fields: Any) -> dict[str, Any]:
    """A v1 event of any other kind: no actor, no ``class_version``."""
    return {"timestamp": instant(at), **fields}


def insert(url: str, rows: list[tuple[UUID, int, str, dict[str, Any]]]) -> int:
    """INSERT the rows as they are (bypassing the application); the last one's position."""
    positions = []
    with psycopg.connect(url) as conn:
        for originator_id, version, topic, state in rows:
            row = conn.execute(
                "INSERT INTO todos_events (originator_id, originator_version, topic, state) "
                "VALUES (%s, %s, %s, %s) RETURNING notification_id",
                (originator_id, version, topic, json.dumps(state).encode()),
            ).fetchone()
            assert row is not None
            positions.append(int(row[0]))
        conn.execute("NOTIFY todos_events")  # what the library's recorder does on insert
    return positions[-1]


def old_log(url: str) -> tuple[UUID, UUID, UUID, int]:
    """Three old todos: one renamed then completed, one deleted, one v1 left open."""
    done, deleted, oldest = uuid4(), uuid4(), uuid4()
    position = insert(
        url,
        [
            (oldest, 1, f"{TODO}.Created", created_v1("2024-01-05T10:00:00+00:00", "v1 todo")),
            (done, 1, f"{TODO}.Created", created_v2("2025-03-01T09:00:00+00:00", "draft")),
            (deleted, 1, f"{TODO}.Created", created_v2("2025-03-02T09:00:00+00:00", "doomed")),
            (done, 2, f"{TODO}.TitleChanged", v1("2025-03-03T09:00:00+00:00", title="final")),
            (done, 3, f"{TODO}.Completed", v1("2025-03-04T09:00:00+00:00")),
            (deleted, 2, f"{TODO}.Deleted", v1("2025-03-05T09:00:00+00:00")),
        ],
    )
    return done, deleted, oldest, position


def test_old_events_read_into_the_owners_inbox_everywhere(
    todo_app: TodoApplication,
    read_side: ReadSide,
    database_url: str,
    client: TestClient,
    auth: Callable[..., dict[str, str]],
) -> None:
    done, deleted, oldest, position = old_log(database_url)
    inbox = inbox_id(OWNER)

    # The aggregate: in the Inbox, ordered by creation time, every event the owner's.
    todo = todo_app.repository.get(done)
    assert isinstance(todo, Todo)
    assert (todo.list_id, todo.title, todo.status.value, todo.version) == (
        inbox,
        "final",
        "completed",
        3,
    )
    created_at = datetime.fromisoformat("2025-03-01T09:00:00+00:00")
    assert todo.order_key == creation_key(created_at, done)
    assert (todo.assignee, todo.recurrence, todo.steps, todo.completions) == (None, None, [], 0)
    first = todo_app.repository.get(oldest)
    assert isinstance(first, Todo)
    assert (first.list_id, first.priority.value) == (inbox, "normal")
    assert first.order_key < todo.order_key  # older todos sort first
    gone = todo_app.repository.get(deleted)
    assert isinstance(gone, Todo)
    assert gone.deleted
    assert list(todo_app.events.get(inbox)) == []  # no Inbox aggregate: none is needed

    # Both projections: the rows are the aggregates', in the Inbox.
    wait_until(
        lambda: all(read_side.position(k) >= position for k in ("todos", "stats")),
        what="the projections to apply the old events",
    )
    with read_side.connect() as conn:
        rows = {
            r["id"]: r
            for r in conn.execute(
                f"SELECT * FROM {read_side.schema}.todos WHERE id = ANY(%s)",
                ([done, deleted, oldest],),
            ).fetchall()
        }
        counts = conn.execute(
            f"SELECT open, completed, total FROM {read_side.schema}.stats_counts "
            "WHERE list_id = %s",
            (inbox,),
        ).fetchone()
    assert {r["list_id"] for r in rows.values()} == {inbox}
    assert rows[done]["order_key"] == todo.order_key
    assert (rows[done]["title"], rows[done]["status"]) == ("final", "completed")
    assert rows[deleted]["deleted"]
    assert counts == {"open": 1, "completed": 1, "total": 2}

    # Over HTTP, as their owner.
    headers = {"X-Min-Position": str(position), **auth(OWNER)}
    listed = client.get(
        "/v1/todos", params={"list_id": str(inbox), "sort": "position"}, headers=headers
    )
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert [(t["id"], t["title"], t["list_id"]) for t in items] == [
        (str(oldest), "v1 todo", str(inbox)),
        (str(done), "final", str(inbox)),
    ]
    lists = client.get("/v1/lists", headers=headers).json()["items"]
    assert [(x["id"], x["name"], x["role"], x["open_todos"]) for x in lists] == [
        (str(inbox), "Inbox", "owner", 1)
    ]
    stats = client.get("/v1/stats", headers=headers).json()
    assert (stats["open"], stats["completed"], stats["total"]) == (1, 1, 2)
    one = client.get(f"/v1/todos/{done}", headers=headers)
    assert one.status_code == 200, one.text
    assert one.json()["list_id"] == str(inbox)
    assert client.get(f"/v1/todos/{deleted}", headers=headers).status_code == 410
    assert client.get(f"/v1/todos/{done}", headers=auth("someone-else")).status_code == 404
    events = client.get(f"/v1/todos/{done}/events", headers=auth(OWNER))
    assert events.status_code == 200, events.text
    assert [(e["version"], e["actor"]) for e in events.json()] == [
        (1, OWNER),
        (2, OWNER),
        (3, OWNER),
    ]
    removal = client.get(f"/v1/todos/{deleted}/events", headers=auth(OWNER)).json()
    assert [e["actor"] for e in removal] == [OWNER, OWNER]

    # And the old todos take new commands, appended after the old events.
    moved = client.post(f"/v1/todos/{oldest}/move", json={"after": str(done)}, headers=auth(OWNER))
    assert moved.status_code == 200, moved.text
    again = client.get(
        "/v1/todos",
        params={"list_id": str(inbox), "sort": "position"},
        headers={"X-Min-Position": moved.headers["X-Position"], **auth(OWNER)},
    ).json()["items"]
    assert [t["id"] for t in again] == [str(done), str(oldest)]
