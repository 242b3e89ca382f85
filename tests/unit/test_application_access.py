"""The service layer's access rules and moves, on the library's in-memory event store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TypeVar
from uuid import UUID, uuid4

import pytest

from tododb.application import (
    Forbidden,
    ListNotFound,
    TodoApplication,
    TodoGone,
    TodoNotFound,
)
from tododb.domain import InboxFixed, InvariantViolation, LastOwner, TodoList, inbox_id

T = TypeVar("T")


class FakeIndex:
    """An order index over the application's own aggregates (always current)."""

    def __init__(self, app: TodoApplication) -> None:
        self.app = app
        self.todos: list[UUID] = []

    def keys(self, list_id: UUID) -> list[str]:
        live = [self.app.repository.get(t) for t in self.todos]
        return sorted(t.order_key for t in live if t.list_id == list_id and not t.deleted)

    def next_key(self, list_id: UUID, key: str) -> str | None:
        return next((k for k in self.keys(list_id) if k > key), None)

    def previous_key(self, list_id: UUID, key: str) -> str | None:
        return next((k for k in reversed(self.keys(list_id)) if k < key), None)


@pytest.fixture
def app() -> Iterator[TodoApplication]:
    application = TodoApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield application
    application.close()


def shared(app: TodoApplication) -> UUID:
    list_id = app.create_list("olga", "Shared").todo_list.id
    app.set_member("olga", list_id, "ed", "editor")
    app.set_member("olga", list_id, "vic", "viewer")
    return list_id


def test_the_inbox_is_made_once_with_the_first_todo(app: TodoApplication) -> None:
    first = app.create_todo("ann", title="one")
    assert first.todo.list_id == inbox_id("ann")
    inbox = app.repository.get(inbox_id("ann"))
    assert isinstance(inbox, TodoList)
    assert (inbox.inbox, inbox.version) == (True, 1)
    app.create_todo("ann", title="two")
    app.ensure_inbox("ann")
    assert app.repository.get(inbox_id("ann")).version == 1
    # A process that has not seen the Inbox yet finds it, and makes no second one.
    app._known_inboxes.clear()
    assert app.create_todo("ann", title="three").todo.list_id == inbox_id("ann")
    assert app.repository.get(inbox_id("ann")).version == 1


def test_roles_decide_every_command(app: TodoApplication) -> None:
    list_id = shared(app)
    todo = app.create_todo("ed", title="shared", list_id=list_id).todo
    app.update_todo("olga", todo.id, {"title": "by the owner"})
    with pytest.raises(Forbidden):
        app.complete_todo("vic", todo.id)
    with pytest.raises(TodoNotFound):
        app.complete_todo("stranger", todo.id)
    with pytest.raises(Forbidden):
        app.create_todo("vic", title="no", list_id=list_id)
    with pytest.raises(ListNotFound):
        app.create_todo("stranger", title="no", list_id=list_id)
    with pytest.raises(Forbidden):
        app.rename_list("ed", list_id, "mine")
    assert app.get_todo("vic", todo.id).title == "by the owner"
    events = app.list_events("vic", todo.id)
    assert [e.actor for e in events] == ["ed", "olga"]
    app.remove_member("olga", list_id, "vic")
    with pytest.raises(TodoNotFound):
        app.get_todo("vic", todo.id)
    with pytest.raises(TodoNotFound):
        app.list_events("vic", todo.id)


def test_someone_elses_inbox_is_never_theirs(app: TodoApplication) -> None:
    todo = app.create_todo("ann", title="private").todo
    for command in (app.complete_todo, app.delete_todo, app.get_todo):
        with pytest.raises(TodoNotFound):
            command("bob", todo.id)
    with pytest.raises(ListNotFound):
        app.create_todo("bob", title="x", list_id=inbox_id("ann"))
    with pytest.raises(InvariantViolation):
        app.create_todo("ann", title="x", assignee="bob")
    with pytest.raises(InboxFixed):
        app.rename_list("ann", inbox_id("ann"), "Mine")


def test_assignees_are_members(app: TodoApplication) -> None:
    list_id = shared(app)
    todo = app.create_todo("olga", title="t", list_id=list_id, assignee="vic").todo
    assert todo.assignee == "vic"
    with pytest.raises(InvariantViolation):
        app.update_todo("olga", todo.id, {"assignee": "stranger"})
    assert app.update_todo("olga", todo.id, {"assignee": None}).todo.assignee is None


def test_the_last_owner_stays(app: TodoApplication) -> None:
    list_id = shared(app)
    with pytest.raises(LastOwner):
        app.remove_member("olga", list_id, "olga")
    app.remove_member("ed", list_id, "ed")  # leaving needs no role
    with pytest.raises(ListNotFound):
        app.get_list("ed", list_id)


def test_deleting_a_list_deletes_its_todos_in_one_append(app: TodoApplication) -> None:
    list_id = shared(app)
    todos = [app.create_todo("ed", title=f"t{i}", list_id=list_id).todo.id for i in range(3)]
    elsewhere = app.create_todo("ed", title="mine").todo.id
    app.delete_list("olga", list_id, [*todos, elsewhere, uuid4()])
    for todo_id in todos:
        last = app.list_events("ed", todo_id)[-1]
        assert (last.type, last.data["reason"], last.actor) == (
            "todos.task.deleted",
            "list_deleted",
            "olga",
        )
        with pytest.raises(TodoNotFound):
            app.update_todo("olga", todo_id, {"title": "x"})
        with pytest.raises(TodoGone):
            app.get_todo("olga", todo_id)
    assert not app.get_todo("ed", elsewhere).deleted
    with pytest.raises(ListNotFound):
        app.get_list("olga", list_id)


def test_moves_between_neighbours(app: TodoApplication) -> None:
    index = FakeIndex(app)
    app.order_index = index
    list_id = shared(app)
    a, b, c = (app.create_todo("ed", title=n, list_id=list_id).todo.id for n in "abc")
    index.todos = [a, b, c]

    def order() -> list[UUID]:
        return sorted(index.todos, key=lambda t: app.repository.get(t).order_key)

    app.move_todo("ed", c, after=a)
    assert order() == [a, c, b]
    app.move_todo("ed", a, before=b)
    assert order() == [c, a, b]
    app.move_todo("ed", c)
    assert order() == [a, b, c]
    again = app.move_todo("ed", c)  # already last
    assert not again.recorded
    with pytest.raises(InvariantViolation):
        app.move_todo("ed", a, after=c, before=b)
    with pytest.raises(InvariantViolation):
        app.move_todo("ed", a, after=a)
    with pytest.raises(Forbidden):
        app.move_todo("vic", a, after=b)
    moved = app.move_todo("ed", a, list_id=inbox_id("ed"))
    assert moved.todo.list_id == inbox_id("ed")
    assert order() == [b, c, a]  # (a is alone in the Inbox)


async def test_a_store_without_group_commit_creates_on_a_thread(app: TodoApplication) -> None:
    """``create_todo_async`` on a store that cannot append on the loop (here the library's
    in-memory one) is ``create_todo`` on the worker thread it is given, every time."""
    calls: list[object] = []

    async def offload(func: Callable[[], T]) -> T:
        calls.append(func)
        return await asyncio.to_thread(func)

    first = await app.create_todo_async("ann", offload=offload, title="one")
    second = await app.create_todo_async("ann", offload=offload, title="two")
    assert len(calls) == 2
    assert [app.get_todo("ann", r.todo.id).title for r in (first, second)] == ["one", "two"]
