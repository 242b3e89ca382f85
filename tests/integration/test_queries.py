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
