"""Contract v1 commands over HTTP, on a real PostgreSQL event store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import PROBLEM, create_todo
from tododb.domain import inbox_id


def create(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return create_todo(client, headers, **{"title": "Buy milk", **body})


def test_create_returns_the_todo_location_etag_and_position(
    client: TestClient, headers: dict[str, str], user: str
) -> None:
    r = create(
        client,
        headers,
        title="  Write report ",
        description="Q4",
        due="2030-01-01T10:00:00+02:00",
        priority="high",
        tags=["work", "q4"],
    )
    todo = r.json()
    assert r.headers["Location"] == f"/v1/todos/{todo['id']}"
    assert r.headers["ETag"] == '"1"'
    assert int(r.headers["X-Position"]) >= 1
    assert todo["title"] == "Write report"
    assert todo["due"] == "2030-01-01T08:00:00Z"
    assert todo["tags"] == ["q4", "work"]
    assert todo["status"] == "open"
    assert todo["completed_at"] is None
    assert todo["version"] == 1
    assert todo["list_id"] == str(inbox_id(user))
    assert todo["steps"] == []
    assert (todo["assignee"], todo["recurrence"], todo["completions"]) == (None, None, 0)
    assert set(todo) == {
        "id",
        "list_id",
        "order_key",
        "assignee",
        "recurrence",
        "remind_at",
        "steps",
        "completions",
        "title",
        "description",
        "due",
        "priority",
        "tags",
        "status",
        "created_at",
        "updated_at",
        "completed_at",
        "version",
    }


def test_idempotency_key_returns_the_same_todo_and_records_nothing(
    client: TestClient, headers: dict[str, str]
) -> None:
    key = {"Idempotency-Key": "create-42", **headers}
    first = client.post("/v1/todos", json={"title": "Once"}, headers=key)
    second = client.post("/v1/todos", json={"title": "Once"}, headers=key)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["X-Position"] == first.headers["X-Position"]
    events = client.get(f"/v1/todos/{first.json()['id']}/events", headers=headers).json()
    assert [e["type"] for e in events] == ["todos.task.created"]
    other = client.post("/v1/todos", json={"title": "Different"}, headers=key)
    assert other.status_code == 422
    assert other.headers["content-type"] == PROBLEM


def test_idempotency_keys_are_per_user(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    a = client.post(
        "/v1/todos", json={"title": "Same"}, headers={"Idempotency-Key": "k", **auth("ik-a")}
    )
    b = client.post(
        "/v1/todos", json={"title": "Same"}, headers={"Idempotency-Key": "k", **auth("ik-b")}
    )
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


def test_patch_changes_any_subset_and_null_due_clears(
    client: TestClient, headers: dict[str, str]
) -> None:
    todo = create(client, headers, due="2030-01-01T00:00:00Z").json()
    r = client.patch(
        f"/v1/todos/{todo['id']}", json={"title": "Buy oat milk", "tags": ["shop"]}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["title"] == "Buy oat milk"
    assert r.json()["tags"] == ["shop"]
    assert r.json()["due"] == "2030-01-01T00:00:00Z"
    assert r.json()["version"] == 3
    assert r.headers["ETag"] == '"3"'
    r = client.patch(f"/v1/todos/{todo['id']}", json={"due": None}, headers=headers)
    assert r.json()["due"] is None
    assert r.json()["version"] == 4
    same = client.patch(f"/v1/todos/{todo['id']}", json={"title": "Buy oat milk"}, headers=headers)
    assert same.status_code == 200
    assert same.json()["version"] == 4
    assert same.headers["X-Position"] == r.headers["X-Position"]
    bad = client.patch(f"/v1/todos/{todo['id']}", json={"title": None}, headers=headers)
    assert bad.status_code == 422


def test_complete_reopen_delete_and_their_events(
    client: TestClient, headers: dict[str, str], user: str
) -> None:
    todo = create(client, headers).json()
    url = f"/v1/todos/{todo['id']}"
    done = client.post(f"{url}/complete", headers=headers)
    assert done.status_code == 200
    assert done.json()["status"] == "completed"
    assert done.json()["completed_at"] is not None
    again = client.post(f"{url}/complete", headers=headers)
    assert again.json()["version"] == done.json()["version"]
    reopened = client.post(f"{url}/reopen", headers=headers)
    assert reopened.json()["status"] == "open"
    assert reopened.json()["completed_at"] is None
    deleted = client.delete(url, headers=headers)
    assert deleted.status_code == 204
    assert int(deleted.headers["X-Position"]) > int(reopened.headers["X-Position"])
    assert client.delete(url, headers=headers).status_code == 204
    gone = client.get(url, headers={"X-Min-Position": deleted.headers["X-Position"], **headers})
    assert gone.status_code == 410
    assert gone.headers["content-type"] == PROBLEM
    assert client.post(f"{url}/complete", headers=headers).status_code == 410
    assert client.patch(url, json={"title": "x"}, headers=headers).status_code == 410
    events = client.get(f"{url}/events", headers=headers)
    assert events.status_code == 200
    body = events.json()
    assert [e["type"] for e in body] == [
        "todos.task.created",
        "todos.task.completed",
        "todos.task.reopened",
        "todos.task.deleted",
    ]
    assert [e["version"] for e in body] == [1, 2, 3, 4]
    assert body[0]["data"]["title"] == "Buy milk"
    assert body[-1]["data"]["reason"] == "deleted"
    assert {e["actor"] for e in body} == {user}
    positions = [e["position"] for e in body]
    assert positions == sorted(positions)
    assert len({e["id"] for e in body}) == 4


def test_if_match_guards_every_command(client: TestClient, headers: dict[str, str]) -> None:
    todo = create(client, headers).json()
    url = f"/v1/todos/{todo['id']}"
    stale = {"If-Match": '"0"', **headers}
    for method, path, body in [
        ("PATCH", url, {"title": "x"}),
        ("POST", f"{url}/complete", None),
        ("POST", f"{url}/reopen", None),
        ("DELETE", url, None),
    ]:
        r = client.request(method, path, json=body, headers=stale)
        assert r.status_code == 412, (method, path, r.text)
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["current_version"] == 1
    ok = client.patch(url, json={"title": "x"}, headers={"If-Match": '"1"', **headers})
    assert ok.status_code == 200
    assert ok.json()["version"] == 2
    bad = client.patch(url, json={"title": "y"}, headers={"If-Match": "garbage", **headers})
    assert bad.status_code == 400
    assert bad.headers["content-type"] == PROBLEM


def test_time_travel_returns_the_state_at_a_version(
    client: TestClient, headers: dict[str, str]
) -> None:
    todo = create(client, headers, title="v1").json()
    url = f"/v1/todos/{todo['id']}"
    client.patch(url, json={"title": "v2"}, headers=headers)
    client.post(f"{url}/complete", headers=headers)
    client.delete(url, headers=headers)
    assert client.get(url, params={"as_of_version": 1}, headers=headers).json()["title"] == "v1"
    v3 = client.get(url, params={"as_of_version": 3}, headers=headers).json()
    assert (v3["title"], v3["status"], v3["version"]) == ("v2", "completed", 3)
    assert client.get(url, params={"as_of_version": 9}, headers=headers).status_code == 404
    assert client.get(url, params={"as_of_version": 0}, headers=headers).status_code == 422


def test_a_user_never_sees_or_changes_another_users_todo(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    owner, intruder = auth("owner-1"), auth("intruder-1")
    created = create(client, owner)
    todo = created.json()
    intruder = {"X-Min-Position": created.headers["X-Position"], **intruder}
    url = f"/v1/todos/{todo['id']}"
    missing = client.get("/v1/todos/00000000-0000-4000-8000-000000000000", headers=intruder)
    for method, path in [
        ("GET", url),
        ("GET", f"{url}/events"),
        ("PATCH", url),
        ("POST", f"{url}/complete"),
        ("POST", f"{url}/reopen"),
        ("DELETE", url),
    ]:
        body = {"title": "mine"} if method == "PATCH" else None
        r = client.request(method, path, json=body, headers=intruder)
        assert r.status_code == 404, (method, path)
        assert r.json()["title"] == missing.json()["title"]
    after = {"X-Min-Position": created.headers["X-Position"], **owner}
    assert client.get(url, headers=after).json()["version"] == 1


def test_bad_input_is_a_problem_not_a_500(client: TestClient, headers: dict[str, str]) -> None:
    cases: list[tuple[Any, int]] = [
        ({"title": ""}, 422),
        ({"title": "   "}, 422),
        ({"title": "x" * 201}, 422),
        ({"title": "ok", "unknown": 1}, 422),
        ({"title": "ok", "priority": "urgent"}, 422),
        ({"title": "ok", "tags": ["Bad Tag"]}, 422),
        ({"title": "ok", "tags": [f"t{i}" for i in range(21)]}, 422),
        ({"title": "ok", "due": "2030-01-01T00:00:00"}, 422),
        ({"title": "ok", "due": "tomorrow"}, 422),
        ({"title": "ok", "description": "d" * 10_001}, 422),
        ([1, 2], 422),
        ({"title": 5}, 422),
    ]
    for body, status in cases:
        r = client.post("/v1/todos", json=body, headers=headers)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["status"] == status
    broken = client.post(
        "/v1/todos", content=b"{not json", headers={"content-type": "application/json", **headers}
    )
    assert broken.status_code in (400, 422)
    assert broken.headers["content-type"] == PROBLEM
    not_uuid = client.get("/v1/todos/not-a-uuid", headers=headers)
    assert not_uuid.status_code == 422


def test_body_over_one_mebibyte_is_413(client: TestClient, headers: dict[str, str]) -> None:
    r = client.post(
        "/v1/todos", json={"title": "x", "description": "d" * (1024 * 1024)}, headers=headers
    )
    assert r.status_code == 413
    assert r.headers["content-type"] == PROBLEM

    def chunks() -> Any:
        for _ in range(20):
            yield b" " * 65536  # no Content-Length: counted as it streams
        yield b'{"title": "x"}'

    streamed = client.post(
        "/v1/todos", content=chunks(), headers={"content-type": "application/json", **headers}
    )
    assert streamed.status_code == 413


def test_missing_or_bad_tokens_are_401_with_a_bearer_challenge(client: TestClient) -> None:
    import jwt

    from tests.conftest import TEST_SECRET

    expired = jwt.encode({"sub": "a", "exp": 1}, TEST_SECRET, algorithm="HS256")
    no_exp = jwt.encode({"sub": "a"}, TEST_SECRET, algorithm="HS256")
    wrong_key = jwt.encode(
        {"sub": "a", "exp": 4_000_000_000}, "another-secret-" * 3, algorithm="HS256"
    )
    for auth_header in [
        None,
        "Basic abc",
        "Bearer nonsense",
        f"Bearer {expired}",
        f"Bearer {no_exp}",
        f"Bearer {wrong_key}",
    ]:
        h = {} if auth_header is None else {"Authorization": auth_header}
        r = client.post("/v1/todos", json={"title": "x"}, headers=h)
        assert r.status_code == 401, auth_header
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == PROBLEM


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_openapi_documents_the_contract_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/todos" in spec["paths"]
    assert "/v1/todos/{todo_id}/events" in spec["paths"]
    assert spec["components"]["schemas"]["TodoCreate"]["examples"]
    assert client.get("/docs").status_code == 200
    assert client.get("/nope").headers["content-type"] == PROBLEM


def test_metrics_count_requests_by_route(client: TestClient, headers: dict[str, str]) -> None:
    todo = client.post("/v1/todos", json={"title": "measured"}, headers=headers).json()
    client.get(f"/v1/todos/{todo['id']}/events", headers=headers)
    body = client.get("/metrics").text
    assert 'tododb_http_requests_total{method="POST",route="/v1/todos",status="201"}' in body
    assert 'route="/v1/todos/{todo_id}/events"' in body
    assert 'tododb_view_position{view="todos"}' in body
    assert todo["id"] not in body
    # The event store's group commit: the create went through a batch.
    figures = {
        line.split()[0]: float(line.split()[1])
        for line in body.splitlines()
        if line.startswith("tododb_append_")
    }
    assert figures["tododb_append_batches_total"] >= 1
    assert figures["tododb_append_commands_total"] >= figures["tododb_append_batches_total"]
    assert figures["tododb_append_batch_seconds_total"] > 0
    assert figures["tododb_append_queued_commands"] >= 0
