"""Delta sync (issue #12) over HTTP on real servers: a client that applies a snapshot and
then delta pages holds exactly what GET /v1/lists and GET /v1/todos show, whatever the
history (a property test over random commands by several users on shared lists); bad
tokens answer 410; a user with 10,000 todos syncs one change in a few milliseconds.

Every read passes X-Min-Position (the last command's X-Position), so nothing sleeps, and
the two sides are compared at one position (their X-Position headers agree).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import PROBLEM
from tododb.application import TodoApplication
from tododb.domain import inbox_id

Auth = Callable[..., dict[str, str]]


@dataclass
class Replica:
    """What a sync client holds: lists and todos by id, and its token."""

    lists: dict[str, dict[str, Any]] = field(default_factory=dict)
    todos: dict[str, dict[str, Any]] = field(default_factory=dict)
    token: str | None = None
    position: int = 0

    def apply(self, items: list[dict[str, Any]]) -> None:
        last = (0, 0, "")
        delta = self.token is not None and _payload(self.token)["k"] != "n"
        for item in items:
            key = (item["position"], 0 if item["kind"] == "list" else 1, item["id"])
            if delta:  # a snapshot's pages go by list and list order instead
                assert key > last, f"items out of order: {key} after {last}"
            last = key
            store = self.lists if item["kind"] == "list" else self.todos
            if item["op"] == "upsert":
                body = item[item["kind"]]
                assert body["id"] == item["id"]
                store[item["id"]] = body
            else:
                store.pop(item["id"], None)


def _payload(token: str) -> dict[str, Any]:
    """What an opaque token holds (the test peeks, a client never needs to)."""
    body = token.split(".")[0]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return payload


class World:
    def __init__(self, client: TestClient, auth: Auth, app: TodoApplication) -> None:
        self.client = client
        self.auth = auth
        self.app = app
        self.position = 0

    def call(self, user: str, method: str, path: str, **kwargs: Any) -> Any:
        r = self.client.request(method, path, headers=self.auth(user), **kwargs)
        # The log's head, not X-Position: a command may answer without one (a no-op),
        # and the comparison wants every event applied.
        self.position = self.app.head_position()
        return r

    def read(self, user: str, path: str, **params: Any) -> Any:
        headers = {**self.auth(user), "X-Min-Position": str(self.position)}
        r = self.client.get(path, headers=headers, params=params)
        assert r.status_code == 200, r.text
        return r

    def sync(self, user: str, replica: Replica, limit: int = 500) -> int:
        """Pages until has_more is false; the position the replica reached."""
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": limit}
            if replica.token:
                params["token"] = replica.token
            r = self.read(user, "/v1/sync", **params)
            page = r.json()
            assert int(r.headers["X-Position"]) == page["position"]
            replica.apply(page["items"])
            replica.token = page["next_token"]
            pages += 1
            assert pages < 10_000
            if not page["has_more"]:
                replica.position = page["position"]
                return pages

    def truth(self, user: str) -> tuple[dict[str, Any], dict[str, Any], int, int]:
        lists: dict[str, Any] = {}
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            r = self.read(user, "/v1/lists", **params)
            lists_position = int(r.headers["X-Position"])
            lists.update((i["id"], i) for i in r.json()["items"])
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        todos: dict[str, Any] = {}
        cursor = None
        while True:
            params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            r = self.read(user, "/v1/todos", **params)
            todos_position = int(r.headers["X-Position"])
            todos.update((i["id"], i) for i in r.json()["items"])
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        return lists, todos, lists_position, todos_position

    def check(self, user: str, replica: Replica) -> None:
        lists, todos, lists_at, todos_at = self.truth(user)
        assert lists_at == todos_at == replica.position, "compared at different positions"
        assert replica.todos == todos
        fields = ("id", "name", "inbox", "owner", "role", "version", "created_at", "updated_at")
        mine = {i: {f: v[f] for f in fields} for i, v in replica.lists.items()}
        theirs = {i: {f: v[f] for f in fields} for i, v in lists.items()}
        assert mine == theirs
        for list_id, summary in lists.items():
            held = [t for t in replica.todos.values() if t["list_id"] == list_id]
            assert summary["open_todos"] == sum(t["status"] == "open" for t in held)
            if summary["version"]:
                detail = self.read(user, f"/v1/lists/{list_id}").json()
                assert replica.lists[list_id]["members"] == detail["members"]


# ---- examples ---------------------------------------------------------------------------


def test_snapshot_of_a_new_user_has_their_unmade_inbox(
    client: TestClient, auth: Auth, todo_app: TodoApplication
) -> None:
    world, user = World(client, auth, todo_app), f"sync-{uuid.uuid4().hex[:8]}"
    replica = Replica()
    world.sync(user, replica)
    assert list(replica.lists) == [str(inbox_id(user))]
    assert replica.lists[str(inbox_id(user))]["version"] == 0
    assert replica.todos == {}
    world.check(user, replica)


def test_sharing_leaving_and_deleting(
    client: TestClient, auth: Auth, todo_app: TodoApplication
) -> None:
    """The cases the rules single out: a joined list brings its old todos, a list left
    takes all its todos away, a todo moved out of sight goes, a deleted list goes."""
    tag = uuid.uuid4().hex[:8]
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    world = World(client, auth, todo_app)
    shared = world.call(alice, "POST", "/v1/lists", json={"name": "shared"}).json()["id"]
    private = world.call(alice, "POST", "/v1/lists", json={"name": "private"}).json()["id"]
    old = [
        world.call(alice, "POST", "/v1/todos", json={"title": f"t{i}", "list_id": shared})
        for i in range(3)
    ]
    bob_replica = Replica()
    world.sync(bob, bob_replica)
    assert str(inbox_id(bob)) in bob_replica.lists
    assert len(bob_replica.lists) == 1
    world.call(alice, "PUT", f"/v1/lists/{shared}/members/{bob}", json={"role": "editor"})
    world.sync(bob, bob_replica)
    world.check(bob, bob_replica)
    assert {t.json()["id"] for t in old} <= set(bob_replica.todos)
    moved = old[0].json()["id"]
    r = world.call(alice, "POST", f"/v1/todos/{moved}/move", json={"list_id": private})
    assert r.status_code == 200, r.text
    world.sync(bob, bob_replica)
    world.check(bob, bob_replica)
    assert moved not in bob_replica.todos
    assert world.call(bob, "DELETE", f"/v1/lists/{shared}/members/{bob}").status_code == 204
    world.sync(bob, bob_replica)
    world.check(bob, bob_replica)
    assert shared not in bob_replica.lists
    assert not bob_replica.todos
    world.call(alice, "PUT", f"/v1/lists/{shared}/members/{bob}", json={"role": "viewer"})
    world.sync(bob, bob_replica)
    world.check(bob, bob_replica)
    assert len(bob_replica.todos) == 2
    assert world.call(alice, "DELETE", f"/v1/lists/{shared}").status_code == 204
    world.sync(bob, bob_replica)
    world.check(bob, bob_replica)
    assert list(bob_replica.lists) == [str(inbox_id(bob))]


def test_paging_continues_across_changes(
    client: TestClient, auth: Auth, todo_app: TodoApplication
) -> None:
    """Pages of one page size, with commands between them: still exact at the end."""
    world, user = World(client, auth, todo_app), f"pager-{uuid.uuid4().hex[:8]}"
    ids = [
        world.call(user, "POST", "/v1/todos", json={"title": f"t{i}"}).json()["id"]
        for i in range(7)
    ]
    replica = Replica()
    r = world.read(user, "/v1/sync", limit=3)
    replica.apply(r.json()["items"])
    replica.token = r.json()["next_token"]
    assert r.json()["has_more"]
    world.call(user, "DELETE", f"/v1/todos/{ids[6]}")
    world.call(user, "PATCH", f"/v1/todos/{ids[0]}", json={"title": "changed"})
    world.sync(user, replica, limit=2)  # the rest of the snapshot, then the delta
    world.check(user, replica)
    before = replica.token
    for i in range(4):
        world.call(user, "POST", f"/v1/todos/{ids[i]}/complete")
    assert world.sync(user, replica, limit=1) >= 4
    world.check(user, replica)
    assert replica.token != before


# ---- 410 --------------------------------------------------------------------------------


def _forge(token: str, **changes: Any) -> str:
    body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return f"{forged}.{signature}"


@pytest.mark.parametrize(
    "spoil",
    [
        lambda t: "garbage",
        lambda t: t + "x",
        lambda t: t.split(".")[0],
        lambda t: _forge(t, p=0),
        lambda t: "." + t,
    ],
    ids=["garbage", "bad-signature", "unsigned", "forged-position", "empty-body"],
)
def test_a_bad_token_is_410(
    client: TestClient, auth: Auth, todo_app: TodoApplication, spoil: Callable[[str], str]
) -> None:
    user = f"gone-{uuid.uuid4().hex[:8]}"
    token = client.get("/v1/sync", headers=auth(user)).json()["next_token"]
    r = client.get("/v1/sync", headers=auth(user), params={"token": spoil(token)})
    assert r.status_code == 410, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["type"].endswith("/sync-token-expired")
    assert "start over" in r.json()["detail"]


def test_another_users_token_is_410(
    client: TestClient, auth: Auth, todo_app: TodoApplication
) -> None:
    token = client.get("/v1/sync", headers=auth("alice-410")).json()["next_token"]
    r = client.get("/v1/sync", headers=auth("mallory-410"), params={"token": token})
    assert r.status_code == 410
    assert r.json()["type"].endswith("/sync-token-expired")


def test_an_old_token_is_410(client: TestClient, auth: Auth, todo_app: TodoApplication) -> None:
    sync_tokens = client.app.state.sync_tokens  # type: ignore[attr-defined]
    token = sync_tokens.issue("s", "old-410", 1)
    body = token.split(".")[0]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["t"] = int(time.time()) - sync_tokens.max_age - 60
    raw = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
    body = raw.decode().rstrip("=")
    signature = base64.urlsafe_b64encode(sync_tokens._sign(body)).decode().rstrip("=")
    r = client.get("/v1/sync", headers=auth("old-410"), params={"token": f"{body}.{signature}"})
    assert r.status_code == 410
    assert "too old" in r.json()["detail"]


def test_a_token_far_ahead_of_the_log_is_410(
    client: TestClient, auth: Auth, todo_app: TodoApplication
) -> None:
    token = client.app.state.sync_tokens.issue("s", "ahead-410", 2**62)  # type: ignore[attr-defined]
    r = client.get("/v1/sync", headers=auth("ahead-410"), params={"token": token})
    assert r.status_code == 410
    assert "ahead" in r.json()["detail"]


# ---- the property -----------------------------------------------------------------------

USERS = 3
Op = tuple[str, int, int, int, int]
OPS = st.tuples(
    st.sampled_from(
        [
            "create",
            "create",
            "create",
            "update",
            "complete",
            "delete",
            "move",
            "move",
            "new_list",
            "share",
            "share",
            "unshare",
            "leave",
            "delete_list",
            "sync",
            "sync",
            "sync",
        ]
    ),
    st.integers(0, USERS - 1),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(1, 4),
)


class History:
    """Random commands, each interpreted against what exists (indices wrap around)."""

    def __init__(self, world: World) -> None:
        tag = uuid.uuid4().hex[:8]
        self.world = world
        self.users = [f"p{i}-{tag}" for i in range(USERS)]
        self.lists: list[str] = [str(inbox_id(u)) for u in self.users]
        self.todos: list[str] = []
        self.replicas = [Replica() for _ in self.users]

    def run(self, op: Op) -> None:
        name, who, a, b, limit = op
        user = self.users[who]
        w = self.world
        pick = lambda seq, n: seq[n % len(seq)] if seq else None  # noqa: E731
        if name == "sync":
            w.sync(user, self.replicas[who], limit=limit)
            w.check(user, self.replicas[who])
        elif name == "create":
            r = w.call(
                user, "POST", "/v1/todos", json={"title": f"t{a}", "list_id": pick(self.lists, b)}
            )
            if r.status_code == 201:
                self.todos.append(r.json()["id"])
        elif name == "update" and self.todos:
            w.call(user, "PATCH", f"/v1/todos/{pick(self.todos, a)}", json={"title": f"u{b}"})
        elif name == "complete" and self.todos:
            w.call(user, "POST", f"/v1/todos/{pick(self.todos, a)}/complete")
        elif name == "delete" and self.todos:
            w.call(user, "DELETE", f"/v1/todos/{pick(self.todos, a)}")
        elif name == "move" and self.todos:
            w.call(
                user,
                "POST",
                f"/v1/todos/{pick(self.todos, a)}/move",
                json={"list_id": pick(self.lists, b)},
            )
        elif name == "new_list":
            r = w.call(user, "POST", "/v1/lists", json={"name": f"l{a}"})
            if r.status_code == 201:
                self.lists.append(r.json()["id"])
        elif name == "share":
            role = ("owner", "editor", "viewer")[b % 3]
            other = self.users[b % USERS]
            w.call(
                user, "PUT", f"/v1/lists/{pick(self.lists, a)}/members/{other}", json={"role": role}
            )
        elif name == "unshare":
            other = self.users[b % USERS]
            w.call(user, "DELETE", f"/v1/lists/{pick(self.lists, a)}/members/{other}")
        elif name == "leave":
            w.call(user, "DELETE", f"/v1/lists/{pick(self.lists, a)}/members/{user}")
        elif name == "delete_list":
            w.call(user, "DELETE", f"/v1/lists/{pick(self.lists, a)}")

    def finish(self) -> None:
        for user, replica in zip(self.users, self.replicas, strict=True):
            self.world.sync(user, replica, limit=3)
            self.world.check(user, replica)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(ops=st.lists(OPS, min_size=5, max_size=40))
def test_sync_replays_to_the_query_endpoints(
    client: TestClient, auth: Auth, todo_app: TodoApplication, ops: list[Op]
) -> None:
    history = History(World(client, auth, todo_app))
    for op in ops:
        history.run(op)
    history.finish()
