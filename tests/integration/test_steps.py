"""Steps, a checklist inside a todo, over HTTP (issue #11): add, rename, check, uncheck,
reorder, remove; at most 100."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import PROBLEM, create_todo


def add(client: TestClient, headers: dict[str, str], todo_id: str, text: str) -> Any:
    return client.post(f"/v1/todos/{todo_id}/steps", json={"text": text}, headers=headers)


def test_a_checklist_from_start_to_end(client: TestClient, headers: dict[str, str]) -> None:
    todo = create_todo(client, headers, title="Move house").json()
    url = f"/v1/todos/{todo['id']}"
    made = [add(client, headers, todo["id"], f"  step {i} ") for i in range(3)]
    assert [r.status_code for r in made] == [201, 201, 201]
    step_ids = [r.headers["Location"].rsplit("/", 1)[1] for r in made]
    assert made[0].headers["Location"] == f"{url}/steps/{step_ids[0]}"
    assert made[-1].headers["ETag"] == '"4"'
    assert [s["text"] for s in made[-1].json()["steps"]] == ["step 0", "step 1", "step 2"]
    a, b, c = step_ids
    r = client.patch(f"{url}/steps/{b}", json={"text": "pack", "done": True}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["steps"][1] == {"id": b, "text": "pack", "done": True}
    r = client.patch(f"{url}/steps/{c}", json={"index": 0}, headers=headers)
    assert [s["id"] for s in r.json()["steps"]] == [c, a, b]
    r = client.patch(f"{url}/steps/{a}", json={"index": 99}, headers=headers)  # clamped
    assert [s["id"] for s in r.json()["steps"]] == [c, b, a]
    r = client.patch(f"{url}/steps/{b}", json={"done": False}, headers=headers)
    assert r.json()["steps"][1]["done"] is False
    same = client.patch(f"{url}/steps/{b}", json={"done": False}, headers=headers)
    assert same.json()["version"] == r.json()["version"]
    deleted = client.delete(f"{url}/steps/{c}", headers=headers)
    assert deleted.status_code == 204
    got = client.get(url, headers={"X-Min-Position": deleted.headers["X-Position"], **headers})
    assert got.status_code == 200, got.text
    assert got.json()["steps"] == [
        {"id": b, "text": "pack", "done": False},
        {"id": a, "text": "step 0", "done": False},
    ]
    types = [e["type"] for e in client.get(f"{url}/events", headers=headers).json()]
    assert types[1:] == [
        "todos.task.step_added",
        "todos.task.step_added",
        "todos.task.step_added",
        "todos.task.step_renamed",
        "todos.task.step_checked",
        "todos.task.step_moved",
        "todos.task.step_moved",
        "todos.task.step_unchecked",
        "todos.task.step_removed",
    ]


def test_at_most_100_steps(client: TestClient, headers: dict[str, str]) -> None:
    todo = create_todo(client, headers, title="Long list").json()
    for i in range(100):
        r = add(client, headers, todo["id"], f"s{i}")
        assert r.status_code == 201, r.text
    r = add(client, headers, todo["id"], "one too many")
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["errors"][0]["loc"] == ["body", "steps"]
    assert len(client.get(f"/v1/todos/{todo['id']}/events", headers=headers).json()) == 101


def test_bad_steps(client: TestClient, headers: dict[str, str]) -> None:
    todo = create_todo(client, headers, title="Checks").json()
    url = f"/v1/todos/{todo['id']}"
    step = add(client, headers, todo["id"], "real").headers["Location"].rsplit("/", 1)[1]
    for body in [
        {"text": ""},
        {"text": "   "},
        {"text": "x" * 501},
        {"text": "a\x01"},
        {},
        {"x": 1},
    ]:
        r = client.post(f"{url}/steps", json=body, headers=headers)
        assert r.status_code == 422, (body, r.text)
    for body in [{"index": -1}, {"done": "maybe"}, {"text": " "}, {"text": None, "x": 1}]:
        r = client.patch(f"{url}/steps/{step}", json=body, headers=headers)
        assert r.status_code == 422, (body, r.text)
    unknown = str(uuid.uuid4())
    for method, body in [("PATCH", {"done": True}), ("DELETE", None)]:
        r = client.request(method, f"{url}/steps/{unknown}", json=body, headers=headers)
        assert r.status_code == 404, r.text
        assert r.json()["type"].endswith("/not-found")
    stale = client.patch(
        f"{url}/steps/{step}", json={"done": True}, headers={"If-Match": '"1"', **headers}
    )
    assert stale.status_code == 412
    assert client.delete(url, headers=headers).status_code == 204
    assert add(client, headers, todo["id"], "after deletion").status_code == 410
