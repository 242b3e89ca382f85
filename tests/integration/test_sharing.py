"""Lists and sharing over HTTP (issue #11): an owner, an editor, a viewer and an outsider
over every endpoint, commands and queries, on real servers.

A non-member is answered exactly as for an unknown id (404); a member whose role does not
allow a command, 403. Queries pass X-Min-Position (the X-Position of the last command), so
they see every command before them, membership changes included; nothing sleeps.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import PROBLEM
from tododb.application import TodoApplication
from tododb.domain import inbox_id
from tododb.entrypoints.bootstrap import build_application
from tododb.infra.settings import Settings

UNKNOWN = "00000000-0000-4000-8000-000000000000"
Auth = Callable[..., dict[str, str]]


@dataclass
class Person:
    id: str
    headers: dict[str, str]


class Scene:
    """Four users and the last log position any of them caused."""

    def __init__(self, client: TestClient, auth: Auth) -> None:
        tag = uuid.uuid4().hex[:8]
        self.client = client
        self.owner, self.editor, self.viewer, self.outsider = (
            Person(f"{role}-{tag}", auth(f"{role}-{tag}"))
            for role in ("owner", "editor", "viewer", "outsider")
        )
        self.position = 0

    def call(self, who: Person, method: str, path: str, **kwargs: Any) -> Any:
        r = self.client.request(method, path, headers=who.headers, **kwargs)
        if "X-Position" in r.headers and r.status_code < 300:
            self.position = max(self.position, int(r.headers["X-Position"]))
        return r

    def read(self, who: Person, path: str, **params: Any) -> Any:
        """A query that sees every command so far."""
        headers = {"X-Min-Position": str(self.position), **who.headers}
        return self.client.get(path, headers=headers, params=params)

    def ok(self, who: Person, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        r = self.call(who, method, path, **kwargs)
        assert r.status_code == status, (who.id, method, path, r.text)
        return r

    def new_list(self, name: str = "Family") -> str:
        r = self.ok(self.owner, "POST", "/v1/lists", 201, json={"name": name})
        list_id: str = r.json()["id"]
        self.ok(
            self.owner,
            "PUT",
            f"/v1/lists/{list_id}/members/{self.editor.id}",
            json={"role": "editor"},
        )
        self.ok(
            self.owner,
            "PUT",
            f"/v1/lists/{list_id}/members/{self.viewer.id}",
            json={"role": "viewer"},
        )
        return list_id

    def todo(self, who: Person, list_id: str, **body: Any) -> dict[str, Any]:
        r = self.ok(
            who, "POST", "/v1/todos", 201, json={"title": "shared", "list_id": list_id, **body}
        )
        todo: dict[str, Any] = r.json()
        return todo


@pytest.fixture
def scene(client: TestClient, auth: Auth) -> Scene:
    return Scene(client, auth)


def problem(r: Any, status: int, kind: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["type"].endswith(f"/{kind}"), r.text


def same_as_unknown(r: Any, unknown: Any) -> None:
    """The answer an unknown id gets: status, type and title (the detail names the id)."""
    assert r.status_code == unknown.status_code == 404, r.text
    assert r.headers["content-type"] == PROBLEM
    assert (r.json()["type"], r.json()["title"]) == (
        unknown.json()["type"],
        unknown.json()["title"],
    )


def ids(page: Any) -> set[str]:
    assert page.status_code == 200, page.text
    return {t["id"] for t in page.json()["items"]}


def test_lists_roles_and_members_from_the_event_store(scene: Scene) -> None:
    s = scene
    created = s.ok(s.owner, "POST", "/v1/lists", 201, json={"name": "  Family  "})
    body = created.json()
    assert created.headers["Location"] == f"/v1/lists/{body['id']}"
    assert created.headers["ETag"] == '"1"'
    assert (body["name"], body["inbox"], body["owner"], body["role"]) == (
        "Family",
        False,
        s.owner.id,
        "owner",
    )
    assert body["members"] == [{"user": s.owner.id, "role": "owner"}]
    list_id = body["id"]
    url = f"/v1/lists/{list_id}"
    s.ok(s.owner, "PUT", f"{url}/members/{s.editor.id}", json={"role": "editor"})
    added = s.ok(s.owner, "PUT", f"{url}/members/{s.viewer.id}", json={"role": "viewer"})
    assert added.headers["ETag"] == '"3"'
    members = {m["user"]: m["role"] for m in added.json()["members"]}
    assert members == {s.owner.id: "owner", s.editor.id: "editor", s.viewer.id: "viewer"}
    for who, role in [(s.owner, "owner"), (s.editor, "editor"), (s.viewer, "viewer")]:
        got = s.ok(who, "GET", url)
        assert got.json()["role"] == role
        assert got.headers["ETag"] == '"3"'
    same_as_unknown(
        s.call(s.outsider, "GET", url), s.call(s.outsider, "GET", f"/v1/lists/{UNKNOWN}")
    )
    renamed = s.ok(s.owner, "PATCH", url, json={"name": "Home"})
    assert renamed.json()["name"] == "Home"
    # Owners only: members, renaming, deleting.
    for who in (s.editor, s.viewer):
        problem(s.call(who, "PATCH", url, json={"name": "Mine"}), 403, "forbidden")
        problem(
            s.call(who, "PUT", f"{url}/members/{s.outsider.id}", json={"role": "viewer"}),
            403,
            "forbidden",
        )
        problem(s.call(who, "DELETE", f"{url}/members/{s.owner.id}"), 403, "forbidden")
        problem(s.call(who, "DELETE", url), 403, "forbidden")
    unknown = s.call(s.outsider, "PATCH", f"/v1/lists/{UNKNOWN}", json={"name": "x"})
    for method, path, body_ in [
        ("PATCH", url, {"name": "Mine"}),
        ("PUT", f"{url}/members/{s.outsider.id}", {"role": "owner"}),
        ("DELETE", f"{url}/members/{s.owner.id}", None),
        ("DELETE", url, None),
    ]:
        same_as_unknown(s.call(s.outsider, method, path, json=body_), unknown)
    # Validated at the edge: names, roles, user ids.
    for bad in ({"name": ""}, {"name": "   "}, {"name": "x" * 101}, {"name": "a\x00b"}, {}):
        problem(s.call(s.owner, "PATCH", url, json=bad), 422, "validation")
    problem(
        s.call(s.owner, "PUT", f"{url}/members/{s.editor.id}", json={"role": "admin"}),
        422,
        "validation",
    )
    problem(
        s.call(s.owner, "PUT", f"{url}/members/bad%20user", json={"role": "viewer"}),
        422,
        "validation",
    )
    problem(
        s.call(s.owner, "PUT", f"{url}/members/{'u' * 129}", json={"role": "viewer"}),
        422,
        "validation",
    )
    # The list as B's listing has it: each member sees it with their role; the outsider not.
    for who, role in [(s.owner, "owner"), (s.editor, "editor"), (s.viewer, "viewer")]:
        listing = s.read(who, "/v1/lists")
        assert listing.status_code == 200, listing.text
        roles = {item["id"]: item["role"] for item in listing.json()["items"]}
        assert roles[list_id] == role
    assert list_id not in {i["id"] for i in s.read(s.outsider, "/v1/lists").json()["items"]}


def test_every_todo_command_by_role(scene: Scene) -> None:
    s = scene
    list_id = s.new_list()
    todo = s.todo(s.owner, list_id, assignee=s.editor.id, due="2030-01-01T09:00:00Z")
    assert (todo["list_id"], todo["assignee"]) == (list_id, s.editor.id)
    url = f"/v1/todos/{todo['id']}"
    # Creating: editors yes, viewers 403, outsiders 404 (as an unknown list).
    s.todo(s.editor, list_id, title="by the editor")
    problem(
        s.call(s.viewer, "POST", "/v1/todos", json={"title": "x", "list_id": list_id}),
        403,
        "forbidden",
    )
    unknown_list = s.call(s.outsider, "POST", "/v1/todos", json={"title": "x", "list_id": UNKNOWN})
    same_as_unknown(
        s.call(s.outsider, "POST", "/v1/todos", json={"title": "x", "list_id": list_id}),
        unknown_list,
    )
    # Someone else's Inbox is not a list one may add to.
    same_as_unknown(
        s.call(
            s.editor, "POST", "/v1/todos", json={"title": "x", "list_id": str(inbox_id(s.owner.id))}
        ),
        unknown_list,
    )
    problem(
        s.call(
            s.owner,
            "POST",
            "/v1/todos",
            json={"title": "x", "list_id": list_id, "assignee": s.outsider.id},
        ),
        422,
        "validation",
    )

    step = s.ok(s.editor, "POST", f"{url}/steps", 201, json={"text": "first"})
    step_id = step.headers["Location"].rsplit("/", 1)[1]
    commands: list[tuple[str, str, Any]] = [
        ("PATCH", url, {"title": "edited", "assignee": s.viewer.id}),
        ("PATCH", url, {"recurrence": "FREQ=WEEKLY;BYDAY=MO"}),
        ("POST", f"{url}/complete", None),
        ("POST", f"{url}/reopen", None),
        ("POST", f"{url}/move", {}),
        ("POST", f"{url}/steps", {"text": "second"}),
        ("PATCH", f"{url}/steps/{step_id}", {"done": True}),
        ("DELETE", f"{url}/steps/{step_id}", None),
    ]
    unknown_todo = s.call(s.outsider, "PATCH", f"/v1/todos/{UNKNOWN}", json={"title": "x"})
    for method, path, body in commands:
        problem(s.call(s.viewer, method, path, json=body), 403, "forbidden")
        same_as_unknown(s.call(s.outsider, method, path, json=body), unknown_todo)
        r = s.call(s.editor, method, path, json=body)
        assert r.status_code in (200, 201, 204), (method, path, r.text)
    problem(s.call(s.viewer, "DELETE", url), 403, "forbidden")
    same_as_unknown(s.call(s.outsider, "DELETE", url), unknown_todo)
    # An assignee must be a member of the list.
    problem(s.call(s.editor, "PATCH", url, json={"assignee": s.outsider.id}), 422, "validation")
    unassigned = s.ok(s.editor, "PATCH", url, json={"assignee": None})
    assert unassigned.json()["assignee"] is None
    # Every event names its actor.
    events = s.ok(s.viewer, "GET", f"{url}/events").json()
    assert events[0]["actor"] == s.owner.id
    assert {e["actor"] for e in events[1:]} == {s.editor.id}
    assert [e["type"] for e in events][:3] == [
        "todos.task.created",
        "todos.task.step_added",
        "todos.task.title_changed",
    ]
    s.ok(s.editor, "DELETE", url, 204)
    assert s.call(s.editor, "GET", f"{url}/events").json()[-1]["data"]["reason"] == "deleted"


def test_every_query_follows_membership(scene: Scene) -> None:
    s = scene
    list_id = s.new_list()
    mine = s.todo(s.owner, list_id, title="wash up", assignee=s.editor.id, tags=["home"])
    theirs = s.todo(s.editor, list_id, title="shop", due="2000-01-01T00:00:00Z")
    s.ok(s.editor, "POST", f"/v1/todos/{theirs['id']}/complete")
    private = s.ok(s.outsider, "POST", "/v1/todos", 201, json={"title": "private"}).json()
    shared = {mine["id"], theirs["id"]}
    for who in (s.owner, s.editor, s.viewer):
        assert shared <= ids(s.read(who, "/v1/todos", limit=200))
        assert ids(s.read(who, "/v1/todos", list_id=list_id)) == shared
        assert ids(s.read(who, "/v1/todos", list_id=list_id, status="open")) == {mine["id"]}
        assert ids(s.read(who, "/v1/todos", list_id=list_id, tag="home")) == {mine["id"]}
        assert ids(s.read(who, "/v1/todos", list_id=list_id, q="shop")) == {theirs["id"]}
        page = s.read(who, "/v1/todos", list_id=list_id, sort="position")
        assert [t["id"] for t in page.json()["items"]] == [mine["id"], theirs["id"]]
        for todo in (mine, theirs):
            got = s.read(who, f"/v1/todos/{todo['id']}")
            assert got.status_code == 200, got.text
            assert got.json()["list_id"] == list_id
            assert s.read(who, f"/v1/todos/{todo['id']}", as_of_version=1).status_code == 200
            assert s.read(who, f"/v1/todos/{todo['id']}/events").status_code == 200
        stats = s.read(who, "/v1/stats").json()
        assert stats["total"] >= 2
    assert ids(s.read(s.editor, "/v1/todos", assignee="me")) == {mine["id"]}
    assert ids(s.read(s.viewer, "/v1/todos", assignee=s.editor.id)) == {mine["id"]}
    viewer_stats = s.read(s.viewer, "/v1/stats").json()
    assert (viewer_stats["open"], viewer_stats["completed"], viewer_stats["total"]) == (1, 1, 2)
    # The outsider: only their own todo, and a 404 for the others exactly as for none.
    assert ids(s.read(s.outsider, "/v1/todos", limit=200)) == {private["id"]}
    assert ids(s.read(s.outsider, "/v1/todos", list_id=list_id)) == set()
    assert ids(s.read(s.outsider, "/v1/todos", assignee=s.editor.id)) == set()
    assert s.read(s.outsider, "/v1/stats").json()["total"] == 1
    unknown = s.read(s.outsider, f"/v1/todos/{UNKNOWN}")
    for todo in (mine, theirs):
        same_as_unknown(s.read(s.outsider, f"/v1/todos/{todo['id']}"), unknown)
        same_as_unknown(s.read(s.outsider, f"/v1/todos/{todo['id']}", as_of_version=1), unknown)
        same_as_unknown(s.read(s.outsider, f"/v1/todos/{todo['id']}/events"), unknown)
    for who in (s.owner, s.editor, s.viewer):
        same_as_unknown(s.read(who, f"/v1/todos/{private['id']}"), unknown)


def test_losing_membership_takes_effect_at_once(scene: Scene) -> None:
    s = scene
    list_id = s.new_list()
    todo = s.todo(s.owner, list_id)
    url = f"/v1/todos/{todo['id']}"
    members = f"/v1/lists/{list_id}/members"
    # Commands: at once, with no wait at all.
    s.ok(s.owner, "PUT", f"{members}/{s.editor.id}", json={"role": "viewer"})
    problem(s.call(s.editor, "PATCH", url, json={"title": "no"}), 403, "forbidden")
    s.ok(s.owner, "DELETE", f"{members}/{s.editor.id}", 204)
    assert s.call(s.editor, "PATCH", url, json={"title": "no"}).status_code == 404
    assert s.call(s.editor, "GET", f"{url}/events").status_code == 404
    assert s.call(s.editor, "GET", f"/v1/lists/{list_id}").status_code == 404
    # Queries with X-Min-Position: from the removal on.
    removed = s.ok(s.owner, "DELETE", f"{members}/{s.viewer.id}", 204)
    assert int(removed.headers["X-Position"]) == s.position
    assert removed.headers["ETag"] == '"6"'
    for who in (s.editor, s.viewer):
        assert s.read(who, url).status_code == 404
        assert s.read(who, url, as_of_version=1).status_code == 404
        assert s.read(who, f"{url}/events").status_code == 404
        assert ids(s.read(who, "/v1/todos", list_id=list_id)) == set()
        assert todo["id"] not in ids(s.read(who, "/v1/todos", limit=200))
        assert s.read(who, "/v1/stats").json()["total"] == 0
        assert list_id not in {i["id"] for i in s.read(who, "/v1/lists").json()["items"]}
    # Back in: at once again.
    s.ok(s.owner, "PUT", f"{members}/{s.viewer.id}", json={"role": "editor"})
    s.ok(s.viewer, "PATCH", url, json={"title": "yes"})
    assert s.read(s.viewer, url).json()["title"] == "yes"


def test_members_leave_and_the_last_owner_cannot(scene: Scene) -> None:
    s = scene
    list_id = s.new_list()
    members = f"/v1/lists/{list_id}/members"
    s.ok(s.viewer, "DELETE", f"{members}/{s.viewer.id}", 204)
    assert s.call(s.viewer, "GET", f"/v1/lists/{list_id}").status_code == 404
    s.ok(s.editor, "DELETE", f"{members}/{s.editor.id}", 204)
    # Removing someone who is not a member records nothing.
    again = s.ok(s.owner, "DELETE", f"{members}/{s.editor.id}", 204)
    assert again.headers["ETag"] == '"5"'
    problem(s.call(s.owner, "DELETE", f"{members}/{s.owner.id}"), 409, "last-owner")
    problem(
        s.call(s.owner, "PUT", f"{members}/{s.owner.id}", json={"role": "editor"}),
        409,
        "last-owner",
    )
    # With a second owner, the first may go.
    s.ok(s.owner, "PUT", f"{members}/{s.editor.id}", json={"role": "owner"})
    s.ok(s.owner, "DELETE", f"{members}/{s.owner.id}", 204)
    got = s.ok(s.editor, "GET", f"/v1/lists/{list_id}").json()
    assert got["members"] == [{"user": s.editor.id, "role": "owner"}]
    problem(s.call(s.editor, "DELETE", f"{members}/{s.editor.id}"), 409, "last-owner")


def test_the_inbox_is_made_on_first_use_and_is_fixed(scene: Scene) -> None:
    s = scene
    inbox = f"/v1/lists/{inbox_id(s.owner.id)}"
    got = s.ok(s.owner, "GET", inbox).json()
    assert (got["name"], got["inbox"], got["role"]) == ("Inbox", True, "owner")
    todo = s.ok(s.owner, "POST", "/v1/todos", 201, json={"title": "mine"}).json()
    assert todo["list_id"] == str(inbox_id(s.owner.id))
    problem(s.call(s.owner, "PATCH", inbox, json={"name": "Other"}), 409, "inbox-fixed")
    problem(
        s.call(s.owner, "PUT", f"{inbox}/members/{s.editor.id}", json={"role": "viewer"}),
        409,
        "inbox-fixed",
    )
    problem(s.call(s.owner, "DELETE", f"{inbox}/members/{s.owner.id}"), 409, "inbox-fixed")
    problem(s.call(s.owner, "DELETE", inbox), 409, "inbox-fixed")
    assert s.call(s.editor, "GET", inbox).status_code == 404
    # A first command in a user's own Inbox makes it, in the same append.
    fresh = s.ok(s.editor, "POST", "/v1/todos", 201, json={"title": "first ever"})
    events = s.ok(s.editor, "GET", f"/v1/todos/{fresh.json()['id']}/events").json()
    assert events[0]["actor"] == s.editor.id
    assert s.ok(s.editor, "GET", f"/v1/lists/{inbox_id(s.editor.id)}").json()["version"] == 1
    listing = s.read(s.editor, "/v1/lists").json()["items"]
    assert listing[0]["id"] == str(inbox_id(s.editor.id))


def test_deleting_a_list_deletes_its_todos_and_says_so(scene: Scene) -> None:
    s = scene
    list_id = s.new_list()
    todos = [s.todo(s.owner, list_id, title=f"t{i}") for i in range(3)]
    moved_out = s.todo(s.editor, list_id, title="kept")
    s.ok(
        s.editor,
        "POST",
        f"/v1/todos/{moved_out['id']}/move",
        json={"list_id": str(inbox_id(s.editor.id))},
    )
    s.ok(s.owner, "DELETE", f"/v1/todos/{todos[2]['id']}", 204)
    deleted = s.ok(s.owner, "DELETE", f"/v1/lists/{list_id}", 204)
    assert int(deleted.headers["X-Position"]) == s.position
    assert s.call(s.owner, "GET", f"/v1/lists/{list_id}").status_code == 404
    assert s.call(s.owner, "DELETE", f"/v1/lists/{list_id}").status_code == 404
    for todo in todos[:2]:
        url = f"/v1/todos/{todo['id']}"
        events = s.ok(s.owner, "GET", f"{url}/events").json()
        assert events[-1]["type"] == "todos.task.deleted"
        assert events[-1]["data"]["reason"] == "list_deleted"
        assert events[-1]["actor"] == s.owner.id
        # One append: the list's event, then its todos'.
        assert s.position - 2 <= events[-1]["position"] <= s.position
        assert s.call(s.editor, "PATCH", url, json={"title": "x"}).status_code == 404
        assert s.read(s.owner, url).status_code in (404, 410)
        assert s.call(s.outsider, "GET", f"{url}/events").status_code == 404
    history = s.ok(s.owner, "GET", f"/v1/todos/{todos[2]['id']}/events").json()
    assert [e["data"].get("reason") for e in history[-1:]] == ["deleted"]
    assert len(history) == 2
    kept = s.read(s.editor, f"/v1/todos/{moved_out['id']}")
    assert kept.status_code == 200
    assert kept.json()["list_id"] == str(inbox_id(s.editor.id))
    for who in (s.owner, s.editor, s.viewer):
        assert ids(s.read(who, "/v1/todos", list_id=list_id)) == set()
        assert list_id not in {i["id"] for i in s.read(who, "/v1/lists").json()["items"]}


def test_two_processes_make_one_inbox(settings: Settings, fresh_database_url: str) -> None:
    """Processes that have not seen a user's Inbox race to make it with their first todos:
    one Inbox, every todo in it."""
    apps = [build_application(settings, fresh_database_url) for _ in range(2)]
    try:
        user = f"racer-{uuid.uuid4().hex[:8]}"
        start = threading.Barrier(4)
        made: list[Any] = []

        def create(app: TodoApplication, i: int) -> None:
            start.wait()
            made.append(app.create_todo(user, title=f"t{i}").todo)

        threads = [threading.Thread(target=create, args=(apps[i % 2], i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(made) == 4
        assert {t.list_id for t in made} == {inbox_id(user)}
        inbox = apps[0].get_list(user, inbox_id(user))
        assert (inbox.version, inbox.inbox) == (1, True)
    finally:
        for app in apps:
            app.close()
