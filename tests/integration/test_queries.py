"""Query endpoints over the read models: filters, keyset pages, stats, read-your-writes."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import PROBLEM, create_todo
from tododb.projections.queries import TodoFilter


def create(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return create_todo(client, headers, **{"title": "todo", **body})


def read_after(r: Any, headers: dict[str, str]) -> dict[str, str]:
    return {"X-Min-Position": r.headers["X-Position"], **headers}


def test_get_reads_the_view_with_read_your_writes(
    client: TestClient, headers: dict[str, str]
) -> None:
    r = create(client, headers, title="fresh")
    todo_id = r.json()["id"]
    got = client.get(f"/v1/todos/{todo_id}", headers=read_after(r, headers))
    assert got.status_code == 200
    assert got.json() == r.json()
    assert int(got.headers["X-Position"]) >= int(r.headers["X-Position"])
    assert got.headers["ETag"] == '"1"'
    done = client.post(f"/v1/todos/{todo_id}/complete", headers=headers)
    after = client.get(f"/v1/todos/{todo_id}", headers=read_after(done, headers)).json()
    assert after["status"] == "completed"
    assert after == done.json()
    deleted = client.delete(f"/v1/todos/{todo_id}", headers=headers)
    gone = client.get(f"/v1/todos/{todo_id}", headers=read_after(deleted, headers))
    assert gone.status_code == 410


def test_min_position_beyond_the_log_is_503_with_retry_after(
    client: TestClient, headers: dict[str, str]
) -> None:
    r = create(client, headers)
    ahead = {"X-Min-Position": str(int(r.headers["X-Position"]) + 10_000), **headers}
    for path in ("/v1/todos", f"/v1/todos/{r.json()['id']}", "/v1/stats"):
        resp = client.get(path, headers=ahead)
        assert resp.status_code == 503, path
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["content-type"] == PROBLEM


def test_list_filters_and_search(client: TestClient, headers: dict[str, str]) -> None:
    now = datetime.now(UTC)
    create(
        client,
        headers,
        title="Buy MILK",
        tags=["shop"],
        priority="low",
        due=(now + timedelta(days=1)).isoformat(),
    )
    create(
        client,
        headers,
        title="Pay rent",
        description="100% of it_now",
        tags=["home"],
        priority="high",
        due=(now + timedelta(days=10)).isoformat(),
    )
    done = create(client, headers, title="Call mum", tags=["home", "family"])
    last = client.post(f"/v1/todos/{done.json()['id']}/complete", headers=headers)
    h = read_after(last, headers)

    def titles(**params: Any) -> list[str]:
        r = client.get("/v1/todos", params=params, headers=h)
        assert r.status_code == 200, r.text
        assert "X-Position" in r.headers
        return sorted(t["title"] for t in r.json()["items"])

    assert titles() == ["Buy MILK", "Call mum", "Pay rent"]
    assert titles(status="completed") == ["Call mum"]
    assert titles(status="open") == ["Buy MILK", "Pay rent"]
    assert titles(tag="home") == ["Call mum", "Pay rent"]
    assert titles(priority="high") == ["Pay rent"]
    assert titles(q="milk") == ["Buy MILK"]
    assert titles(q="100%") == ["Pay rent"]
    assert titles(q="t_n") == ["Pay rent"]
    assert titles(q="%") == ["Pay rent"]
    assert titles(due_before=(now + timedelta(days=2)).isoformat()) == ["Buy MILK"]
    assert titles(due_after=(now + timedelta(days=2)).isoformat()) == ["Pay rent"]
    for bad in (
        {"limit": 0},
        {"limit": 201},
        {"sort": "title"},
        {"status": "done"},
        {"due_before": "2030-01-01T00:00:00"},
        {"tag": "Bad Tag"},
    ):
        r = client.get("/v1/todos", params=bad, headers=h)
        assert r.status_code == 422, bad
        assert r.headers["content-type"] == PROBLEM


def test_other_users_todos_never_appear(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    mine, theirs = auth("lister-a"), auth("lister-b")
    r = create(client, theirs, title="secret")
    listed = client.get("/v1/todos", headers=read_after(r, mine)).json()["items"]
    assert all(t["title"] != "secret" for t in listed)
    assert client.get(f"/v1/todos/{r.json()['id']}", headers=read_after(r, mine)).status_code == 404


def collect(client: TestClient, h: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        body = client.get("/v1/todos", params=query, headers=h).json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def test_keyset_pagination_in_every_sort_order(client: TestClient, headers: dict[str, str]) -> None:
    base = datetime(2031, 1, 1, tzinfo=UTC)
    last = None
    for i in range(7):
        due = None if i % 3 == 0 else (base + timedelta(days=7 - i)).isoformat()
        last = create(client, headers, title=f"t{i}", due=due)
    assert last is not None
    h = read_after(last, headers)
    everything = collect(client, h, limit=200)
    assert len(everything) == 7
    for sort in ("created_at", "-created_at", "due", "-due", "updated_at", "-updated_at"):
        paged = collect(client, h, sort=sort, limit=2)
        assert len(paged) == 7, sort
        assert len({t["id"] for t in paged}) == 7, sort
        field = sort.lstrip("-")
        keys = [(t[field] or "9999") for t in paged]
        assert keys == sorted(keys, reverse=sort.startswith("-")), sort


def test_pages_stay_correct_while_todos_are_added(
    client: TestClient, headers: dict[str, str]
) -> None:
    first = [create(client, headers, title=f"early {i}") for i in range(5)]
    h = read_after(first[-1], headers)
    page = client.get("/v1/todos", params={"limit": 2}, headers=h).json()
    seen = [t["id"] for t in page["items"]]
    cursor = page["next_cursor"]
    late = create(client, headers, title="late")  # lands after the cursor in created order
    h = read_after(late, headers)
    while cursor:
        page = client.get("/v1/todos", params={"limit": 2, "cursor": cursor}, headers=h).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 6
    assert seen[:5] == [r.json()["id"] for r in first]
    assert seen[5] == late.json()["id"]


def test_a_cursor_only_works_with_its_own_query(
    client: TestClient, headers: dict[str, str]
) -> None:
    last = [create(client, headers) for _ in range(3)][-1]
    h = read_after(last, headers)
    cursor = client.get("/v1/todos", params={"limit": 1}, headers=h).json()["next_cursor"]
    assert cursor
    for params in (
        {"cursor": cursor, "sort": "-due"},
        {"cursor": cursor, "status": "open"},
        {"cursor": "garbage"},
        {"cursor": cursor[:-3]},
    ):
        r = client.get("/v1/todos", params=params, headers=h)
        assert r.status_code == 400, params
        assert r.headers["content-type"] == PROBLEM


def test_stats(client: TestClient, headers: dict[str, str]) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    create(client, headers, title="overdue", due=past)
    create(client, headers, title="later", due=future)
    done = create(client, headers, title="done").json()
    client.post(f"/v1/todos/{done['id']}/complete", headers=headers)
    gone = create(client, headers, title="gone", due=past).json()
    last = client.delete(f"/v1/todos/{gone['id']}", headers=headers)
    stats = client.get("/v1/stats", headers=read_after(last, headers))
    assert stats.status_code == 200
    assert stats.json() == {
        "open": 2,
        "completed": 1,
        "overdue": 1,
        "total": 3,
        "completed_last_7_days": 1,
    }
    assert int(stats.headers["X-Position"]) >= int(last.headers["X-Position"])
    reopened = client.post(f"/v1/todos/{done['id']}/reopen", headers=headers)
    again = client.get("/v1/stats", headers=read_after(reopened, headers)).json()
    assert (again["open"], again["completed"], again["completed_last_7_days"]) == (3, 0, 0)


def test_stats_of_a_new_user_are_zero(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    assert client.get("/v1/stats", headers=auth("nobody-yet")).json() == {
        "open": 0,
        "completed": 0,
        "overdue": 0,
        "total": 0,
        "completed_last_7_days": 0,
    }


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "2030-01-01T00:00:00\u0000",
        "2030-01-01T00:00:00",
        "not a date",
        12,
    ],
)
def test_a_forged_cursor_is_400_never_500(
    client: TestClient, headers: dict[str, str], value: object
) -> None:
    """Cursors are not signed: whatever a client puts in one is refused before SQL."""
    fingerprint = TodoFilter().fingerprint()
    payload = {"s": "due", "f": fingerprint, "v": value, "id": str(uuid.uuid4())}
    cursor = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    r = client.get("/v1/todos", params={"sort": "due", "cursor": cursor}, headers=headers)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"


# ---- lists, membership, assignees, positions (issue #11) --------------------------------

Auth = Callable[..., dict[str, str]]


def new_list(client: TestClient, headers: dict[str, str], name: str) -> Any:
    r = client.post("/v1/lists", json={"name": name}, headers=headers)
    assert r.status_code == 201, r.text
    return r


def share(client: TestClient, headers: dict[str, str], list_id: str, user: str, role: str) -> Any:
    r = client.put(f"/v1/lists/{list_id}/members/{user}", json={"role": role}, headers=headers)
    assert r.status_code == 200, r.text
    return r


def titles(client: TestClient, headers: dict[str, str], **params: Any) -> list[str]:
    r = client.get("/v1/todos", params={"limit": 200, **params}, headers=headers)
    assert r.status_code == 200, r.text
    return sorted(t["title"] for t in r.json()["items"])


def people(auth: Auth) -> tuple[str, ...]:
    tag = uuid.uuid4().hex[:6]
    return tuple(f"{name}-{tag}" for name in ("alice", "bob", "carol", "dave"))


def test_queries_follow_membership_filters_and_assignees(client: TestClient, auth: Auth) -> None:
    alice, bob, carol, dave = people(auth)
    ha, hb, hc = (auth(u) for u in (alice, bob, carol))
    team = new_list(client, ha, "Team").json()["id"]
    share(client, ha, team, bob, "editor")
    share(client, ha, team, carol, "viewer")
    create(client, ha, title="alice private")
    plan = create(client, ha, title="plan", list_id=team, assignee=bob).json()
    create(client, hb, title="ship", list_id=team)
    last = create(client, hb, title="bob private")
    h = {u: read_after(last, auth(u)) for u in (alice, bob, carol, dave)}
    assert titles(client, h[alice]) == ["alice private", "plan", "ship"]
    assert titles(client, h[bob]) == ["bob private", "plan", "ship"]
    assert titles(client, h[carol]) == ["plan", "ship"]
    assert titles(client, h[dave]) == []
    assert titles(client, h[bob], list_id=team) == ["plan", "ship"]
    assert titles(client, h[bob], list_id=str(uuid.uuid4())) == []
    assert titles(client, h[dave], list_id=team) == []  # as for an unknown list
    assert titles(client, h[bob], assignee="me") == ["plan"]
    assert titles(client, h[alice], assignee=bob) == ["plan"]
    assert titles(client, h[alice], assignee="me") == []
    assert titles(client, h[bob], assignee="me", list_id=team, status="open") == ["plan"]
    for bad in ("", "a b", "x" * 129, "\u00e9"):
        r = client.get("/v1/todos", params={"assignee": bad}, headers=hb)
        assert (r.status_code, r.headers["content-type"]) == (422, PROBLEM), bad
    # One todo: members read it, anyone else gets exactly the unknown id's 404.
    url = f"/v1/todos/{plan['id']}"
    assert client.get(url, headers=h[carol]).json()["assignee"] == bob
    outsider = client.get(url, headers=h[dave])
    unknown = client.get(f"/v1/todos/{uuid.uuid4()}", headers=h[dave])
    assert outsider.status_code == unknown.status_code == 404
    assert outsider.json()["type"] == unknown.json()["type"]
    # Stats: every visible list, summed.
    assert client.get("/v1/stats", headers=h[bob]).json()["open"] == 3
    assert client.get("/v1/stats", headers=h[carol]).json()["open"] == 2
    assert client.get("/v1/stats", headers=h[dave]).json()["total"] == 0
    # Losing membership shows in the next read that waits for it.
    gone = client.delete(f"/v1/lists/{team}/members/{carol}", headers=ha)
    assert gone.status_code == 204, gone.text
    after = read_after(gone, hc)
    assert client.get(url, headers=after).status_code == 404
    assert titles(client, after) == []
    assert client.get("/v1/stats", headers=after).json()["open"] == 0


def test_a_deleted_lists_todos_vanish_from_every_query(client: TestClient, auth: Auth) -> None:
    alice, bob, *_ = people(auth)
    ha, hb = auth(alice), auth(bob)
    doomed = new_list(client, ha, "Doomed").json()["id"]
    share(client, ha, doomed, bob, "editor")
    todo = create(client, hb, title="in doomed", list_id=doomed).json()
    kept = create(client, hb, title="kept")
    assert titles(client, read_after(kept, hb)) == ["in doomed", "kept"]
    deleted = client.delete(f"/v1/lists/{doomed}", headers=read_after(kept, ha))
    assert deleted.status_code == 204, deleted.text
    h = read_after(deleted, hb)
    assert titles(client, h) == ["kept"]
    assert client.get(f"/v1/todos/{todo['id']}", headers=h).status_code == 404
    assert [x["name"] for x in client.get("/v1/lists", headers=h).json()["items"]] == ["Inbox"]
    assert client.get("/v1/stats", headers=h).json()["open"] == 1


def test_sort_by_position_pages_through_a_lists_order(client: TestClient, auth: Auth) -> None:
    alice, *_ = people(auth)
    ha = auth(alice)
    board = new_list(client, ha, "Board").json()["id"]
    ids = [create(client, ha, title=f"p{i}", list_id=board).json()["id"] for i in range(5)]
    moved = client.post(f"/v1/todos/{ids[4]}/move", json={"after": ids[0]}, headers=ha)
    assert moved.status_code == 200, moved.text
    moved = client.post(f"/v1/todos/{ids[0]}/move", json={"before": ids[3]}, headers=ha)
    assert moved.status_code == 200, moved.text
    h = read_after(moved, ha)
    expected = [ids[4], ids[1], ids[2], ids[0], ids[3]]
    for sort, order in (("position", expected), ("-position", expected[::-1])):
        seen, cursor = [], None
        while True:
            params: dict[str, Any] = {"list_id": board, "sort": sort, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/v1/todos", params=params, headers=h).json()
            seen += [t["id"] for t in page["items"]]
            keys = [t["order_key"] for t in page["items"]]
            assert keys == sorted(keys, reverse=sort.startswith("-"))
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == order, sort
    r = client.get("/v1/todos", params={"sort": "position"}, headers=h)
    assert (r.status_code, r.headers["content-type"]) == (422, PROBLEM)
    assert r.json()["type"].endswith("/validation")
    first = client.get(
        "/v1/todos", params={"list_id": board, "sort": "position", "limit": 1}, headers=h
    ).json()
    for tampered in ("k\u0000", "'; --", "", 7):
        payload = json.loads(base64.urlsafe_b64decode(first["next_cursor"] + "=="))
        payload["v"] = tampered
        forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
        params = {"list_id": board, "sort": "position", "cursor": forged}
        r = client.get("/v1/todos", params=params, headers=h)
        assert (r.status_code, r.headers["content-type"]) == (400, PROBLEM), tampered


def test_lists_of_a_user_with_their_roles(client: TestClient, auth: Auth) -> None:
    from tododb.domain import inbox_id

    alice, bob, carol, _ = people(auth)
    ha, hb = auth(alice), auth(bob)
    never = client.get("/v1/lists", headers=auth(carol))  # no command ever: the Inbox all the same
    assert never.status_code == 200
    assert never.json() == {
        "items": [
            {
                "id": str(inbox_id(carol)),
                "name": "Inbox",
                "inbox": True,
                "owner": carol,
                "role": "owner",
                "open_todos": 0,
                "version": 0,
                "created_at": None,
                "updated_at": None,
            }
        ],
        "next_cursor": None,
    }
    assert int(never.headers["X-Position"]) >= 0
    mine = [new_list(client, ha, f"a{i}").json()["id"] for i in range(3)]
    share(client, ha, mine[1], bob, "viewer")
    last = share(client, ha, mine[2], bob, "editor")
    create(client, ha, title="x", list_id=mine[2])
    last = create(client, ha, title="y", list_id=mine[2])
    h = read_after(last, hb)
    bobs = client.get("/v1/lists", headers=h).json()
    assert [(x["name"], x["role"], x["open_todos"]) for x in bobs["items"]] == [
        ("Inbox", "owner", 0),
        ("a1", "viewer", 0),
        ("a2", "editor", 2),
    ]
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/lists", params=params, headers=read_after(last, ha)).json()
        pages.append([x["name"] for x in page["items"]])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == [["Inbox"], ["a0"], ["a1"], ["a2"]]
    assert client.get("/v1/lists", params={"cursor": "nope"}, headers=ha).status_code == 400
    assert client.get("/v1/lists", params={"limit": 0}, headers=ha).status_code == 422
    ahead = {"X-Min-Position": str(int(last.headers["X-Position"]) + 10_000), **ha}
    assert client.get("/v1/lists", headers=ahead).status_code == 503


def test_todo_ids_in_a_list_and_the_order_index(
    client: TestClient, auth: Auth, read_side: Any
) -> None:
    from uuid import UUID

    from tododb.infra.postgres import ConnectionFactory
    from tododb.projections.queries import ReadModelOrderIndex, ReadModelQueries

    alice, *_ = people(auth)
    ha = auth(alice)
    board = new_list(client, ha, "Ordered").json()["id"]
    todos = [create(client, ha, title=f"o{i}", list_id=board).json() for i in range(3)]
    last = client.delete(f"/v1/todos/{todos[1]['id']}", headers=ha)
    client.get("/v1/todos", headers=read_after(last, ha))  # the view has it all
    import psycopg
    from psycopg.rows import dict_row

    def connect() -> Any:
        return psycopg.connect(read_side.database_url, row_factory=dict_row, autocommit=True)

    factory: ConnectionFactory = connect
    queries = ReadModelQueries(read_side.schema)
    with connect() as conn:
        live = queries.todo_ids_in_list(conn, UUID(board))
        assert live == [UUID(todos[0]["id"]), UUID(todos[2]["id"])]
        assert queries.todo_ids_in_list(conn, uuid.uuid4()) == []
    index = ReadModelOrderIndex(factory, read_side.schema)
    keys = [t["order_key"] for t in todos]
    assert index.next_key(UUID(board), keys[0]) == keys[2]  # the deleted one is skipped
    assert index.previous_key(UUID(board), keys[2]) == keys[0]
    assert index.next_key(UUID(board), keys[2]) is None
    assert index.previous_key(UUID(board), keys[0]) is None
    assert index.next_key(UUID(board), "") == keys[0]
