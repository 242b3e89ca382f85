"""Order and moves over HTTP (issue #11): fractional order keys, one event on one todo per
move, and a storm of concurrent moves in one list that leaves a total order."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from itertools import pairwise
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import PROBLEM
from tododb.application import TodoApplication
from tododb.domain import inbox_id

Auth = Callable[..., dict[str, str]]


def new_list(client: TestClient, headers: dict[str, str], name: str = "Ordered") -> str:
    r = client.post("/v1/lists", json={"name": name}, headers=headers)
    assert r.status_code == 201, r.text
    list_id: str = r.json()["id"]
    return list_id


def new_todos(client: TestClient, headers: dict[str, str], list_id: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = client.post("/v1/todos", json={"title": f"t{i}", "list_id": list_id}, headers=headers)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def move(client: TestClient, headers: dict[str, str], todo_id: str, **body: Any) -> Any:
    return client.post(f"/v1/todos/{todo_id}/move", json=body, headers=headers)


def moved(client: TestClient, headers: dict[str, str], todo_id: str, **body: Any) -> int:
    """Move, check it worked; its X-Position."""
    r = move(client, headers, todo_id, **body)
    assert r.status_code == 200, r.text
    return int(r.headers["X-Position"])


def in_order(
    client: TestClient, headers: dict[str, str], list_id: str, position: int
) -> list[dict[str, Any]]:
    """The list's todos by position, as the read model has them once at ``position``."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"list_id": list_id, "sort": "position", "limit": 200}
        if cursor:
            params["cursor"] = cursor
        r = client.get(
            "/v1/todos", params=params, headers={"X-Min-Position": str(position), **headers}
        )
        assert r.status_code == 200, r.text
        items.extend(r.json()["items"])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


def order(client: TestClient, headers: dict[str, str], list_id: str, position: int) -> list[str]:
    return [t["id"] for t in in_order(client, headers, list_id, position)]


def test_after_before_and_to_the_end(client: TestClient, headers: dict[str, str]) -> None:
    list_id = new_list(client, headers)
    a, b, c, d = new_todos(client, headers, list_id, 4)
    versions = {
        t: client.get(f"/v1/todos/{t}/events", headers=headers).json()[-1]["version"]
        for t in (a, b, c)
    }
    p = moved(client, headers, d, after=a)
    assert order(client, headers, list_id, p) == [a, d, b, c]
    # One event on the moved todo; its neighbours are not rewritten.
    events = client.get(f"/v1/todos/{d}/events", headers=headers).json()
    assert [e["type"] for e in events] == ["todos.task.created", "todos.task.moved"]
    assert events[-1]["data"]["list_id"] == list_id
    for t, version in versions.items():
        assert client.get(f"/v1/todos/{t}/events", headers=headers).json()[-1]["version"] == version
    p = moved(client, headers, a, before=c)
    assert order(client, headers, list_id, p) == [d, b, a, c]
    p = moved(client, headers, d)  # neither: to the end
    assert order(client, headers, list_id, p) == [b, a, c, d]
    p = moved(client, headers, c, after=b, before=a)
    assert order(client, headers, list_id, p) == [b, c, a, d]
    p = moved(client, headers, d, before=b)
    assert order(client, headers, list_id, p) == [d, b, c, a]
    # Already there: nothing recorded.
    again = move(client, headers, d, before=b)
    assert again.status_code == 200
    assert again.json()["version"] == 4
    assert int(again.headers["X-Position"]) == p
    keys = [t["order_key"] for t in in_order(client, headers, list_id, p)]
    assert keys == sorted(keys, key=lambda k: k.encode())


def test_moving_to_another_list(
    client: TestClient, headers: dict[str, str], user: str, auth: Auth
) -> None:
    first, second = new_list(client, headers, "one"), new_list(client, headers, "two")
    (a,) = new_todos(client, headers, first, 1)
    x, y = new_todos(client, headers, second, 2)
    p = moved(client, headers, a, list_id=second, after=x)
    assert order(client, headers, second, p) == [x, a, y]
    assert order(client, headers, first, p) == []
    p = moved(client, headers, a, list_id=str(inbox_id(user)))
    assert order(client, headers, str(inbox_id(user)), p)[-1] == a
    # Another list needs an editor's role there too; a list one is not in is unknown.
    other = auth(f"other-{uuid.uuid4().hex[:6]}")
    theirs = new_list(client, other, "theirs")
    r = move(client, headers, a, list_id=theirs)
    assert r.status_code == 404
    client.put(f"/v1/lists/{theirs}/members/{user}", json={"role": "viewer"}, headers=other)
    r = move(client, headers, a, list_id=theirs)
    assert r.status_code == 403
    assert r.headers["content-type"] == PROBLEM


def test_bad_moves_are_422(client: TestClient, headers: dict[str, str]) -> None:
    first, second = new_list(client, headers, "one"), new_list(client, headers, "two")
    a, b, c = new_todos(client, headers, first, 3)
    (x,) = new_todos(client, headers, second, 1)
    gone = new_todos(client, headers, first, 1)[0]
    assert client.delete(f"/v1/todos/{gone}", headers=headers).status_code == 204
    for body in [
        {"after": a},  # itself
        {"before": a},
        {"after": x},  # not in the list
        {"after": gone},  # deleted
        {"before": str(uuid.uuid4())},  # unknown
        {"after": c, "before": b},  # out of order
        {"list_id": second, "after": b},  # not in the target list
        {"after": "not-a-uuid"},
        {"after": b, "unknown": 1},
    ]:
        r = move(client, headers, a, **body)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"] == PROBLEM
    assert len(client.get(f"/v1/todos/{a}/events", headers=headers).json()) == 1


def test_a_move_storm_leaves_a_total_order(
    client: TestClient, headers: dict[str, str], user: str, todo_app: TodoApplication
) -> None:
    list_id = new_list(client, headers, "storm")
    todos = new_todos(client, headers, list_id, 24)
    threads, moves_each = 8, 20
    positions: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def storm(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(moves_each):
            todo, neighbour, other = rng.sample(todos, 3)
            kind = rng.randrange(4)
            body = (
                {"after": neighbour},
                {"before": neighbour},
                {},
                {"after": neighbour, "before": other},
            )[kind]
            r = move(client, headers, todo, **body)
            with lock:
                if r.status_code == 200:
                    positions.append(int(r.headers["X-Position"]))
                elif not (r.status_code == 422 and kind == 3):  # a random pair out of order
                    failures.append(f"{r.status_code} {r.text}")

    workers = [threading.Thread(target=storm, args=(seed,)) for seed in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert failures == []
    assert len(positions) > threads * moves_each // 2
    items = in_order(client, headers, list_id, max(positions))
    keys = [t["order_key"] for t in items]
    assert sorted(t["id"] for t in items) == sorted(todos)
    assert len(set(keys)) == len(keys), "two todos share an order key"
    assert all(a.encode() < b.encode() for a, b in pairwise(keys))
    # The read model's order is the aggregates' own.
    truth = sorted(todos, key=lambda t: todo_app.get_todo(user, uuid.UUID(t)).order_key.encode())
    assert [t["id"] for t in items] == truth
    assert keys == [todo_app.get_todo(user, uuid.UUID(t)).order_key for t in truth]
