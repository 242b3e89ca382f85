"""The TodoList aggregate: members and roles, the last owner, the Inbox."""

from __future__ import annotations

import pytest

from tododb.domain import (
    INBOX_NAME,
    InboxFixed,
    InvariantViolation,
    LastOwner,
    ListDeletedError,
    Role,
    TodoList,
    inbox_id,
    public_type,
)
from tododb.domain.invariants import MEMBERS_MAX


def shared() -> TodoList:
    todo_list = TodoList.create(owner="olga", name="  Groceries ")
    todo_list.set_member("ed", "editor", actor="olga")
    todo_list.set_member("vic", "viewer", actor="olga")
    return todo_list


def test_a_list_records_its_owner_and_members_with_the_actor() -> None:
    todo_list = shared()
    events = todo_list.collect_events()
    assert [public_type(e) for e in events] == [
        "todos.list.created",
        "todos.list.member_set",
        "todos.list.member_set",
    ]
    assert todo_list.name == "Groceries"
    assert todo_list.members == {"olga": Role.OWNER, "ed": Role.EDITOR, "vic": Role.VIEWER}
    assert all(e.actor == "olga" for e in events)  # type: ignore[attr-defined]
    assert (todo_list.role_of("vic"), todo_list.role_of("stranger")) == (Role.VIEWER, None)


def test_setting_the_same_role_again_records_nothing() -> None:
    todo_list = shared()
    todo_list.collect_events()
    todo_list.set_member("ed", "editor", actor="olga")
    todo_list.remove_member("stranger", actor="olga")
    assert todo_list.collect_events() == []


def test_the_last_owner_can_neither_leave_nor_be_demoted() -> None:
    todo_list = shared()
    with pytest.raises(LastOwner):
        todo_list.remove_member("olga", actor="olga")
    with pytest.raises(LastOwner):
        todo_list.set_member("olga", "editor", actor="olga")
    todo_list.set_member("ed", "owner", actor="olga")
    todo_list.remove_member("olga", actor="olga")  # now another owner remains
    assert todo_list.owners == ["ed"]


def test_roles_and_user_ids_are_checked() -> None:
    todo_list = shared()
    with pytest.raises(InvariantViolation, match="role"):
        todo_list.set_member("x", "admin", actor="olga")
    with pytest.raises(InvariantViolation, match="owner"):
        todo_list.set_member("bad user", "viewer", actor="olga")
    with pytest.raises(InvariantViolation, match="name"):
        TodoList.create(owner="olga", name="   ")


def test_a_list_has_a_bounded_number_of_members() -> None:
    todo_list = TodoList.create(owner="olga", name="Big")
    for i in range(MEMBERS_MAX - 1):
        todo_list.set_member(f"user{i}", "viewer", actor="olga")
    with pytest.raises(InvariantViolation, match="at most"):
        todo_list.set_member("one-too-many", "viewer", actor="olga")


def test_a_deleted_list_has_no_members_and_takes_no_commands() -> None:
    todo_list = shared()
    todo_list.delete(actor="olga")
    todo_list.delete(actor="olga")  # twice: one event
    assert [public_type(e) for e in todo_list.collect_events()][-1] == "todos.list.deleted"
    assert todo_list.role_of("olga") is None
    with pytest.raises(ListDeletedError):
        todo_list.rename("New", actor="olga")


def test_the_inbox_is_derived_from_the_user_and_fixed() -> None:
    inbox = TodoList.create_inbox("olga")
    assert (inbox.id, inbox.name, inbox.inbox) == (inbox_id("olga"), INBOX_NAME, True)
    assert inbox_id("olga") != inbox_id("ed")
    for command in (
        lambda: inbox.rename("Mine", actor="olga"),
        lambda: inbox.set_member("ed", "viewer", actor="olga"),
        lambda: inbox.delete(actor="olga"),
    ):
        with pytest.raises(InboxFixed):
            command()
