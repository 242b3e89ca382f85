"""Read-model rows are snapshots of their aggregates: the round trip loses nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from tododb.domain import Todo, TodoList, inbox_id
from tododb.projections.rows import ListRow, MissingRow, TodoRow, fold_events


def state(aggregate: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(aggregate).items() if k != "_pending_events"}


def a_rich_todo() -> Todo:
    todo = Todo.create(
        owner="ann",
        title="t",
        due=datetime(2030, 1, 7, 9, tzinfo=UTC),
        recurrence="FREQ=WEEKLY",
        assignee="ann",
    )
    step = todo.add_step("one", actor="ann")
    todo.add_step("two", actor="bo")
    todo.check_step(step, actor="bo")
    todo.move(uuid4(), "a0", actor="bo")
    todo.complete(actor="ann", now=datetime(2030, 1, 7, 10, tzinfo=UTC))
    return todo


def test_a_todo_row_sets_every_attribute_the_aggregate_has() -> None:
    todo = a_rich_todo()
    assert todo.completions == 1
    assert todo.steps[0]["done"]
    row = TodoRow.from_aggregate(todo, position=9)
    assert state(row.to_aggregate()) == state(todo)
    assert TodoRow.from_aggregate(row.to_aggregate(), 9) == row


def test_a_list_row_sets_every_attribute_the_aggregate_has() -> None:
    todo_list = TodoList.create(owner="ann", name="Home")
    todo_list.set_member("bo", "editor", actor="ann")
    todo_list.rename("House", actor="ann")
    row = ListRow.from_aggregate(todo_list, position=4)
    assert row.members == {"ann": "owner", "bo": "editor"}
    assert state(row.to_aggregate()) == state(todo_list)
    inbox = ListRow.from_aggregate(TodoList.create_inbox("ann"), 1)
    assert (inbox.id, inbox.inbox, inbox.name) == (inbox_id("ann"), True, "Inbox")


def test_folding_continues_from_rows_of_both_aggregates_without_sharing_state() -> None:
    todo = Todo.create(owner="ann", title="t")
    step = todo.add_step("s", actor="ann")
    todo_list = TodoList.create(owner="ann", name="L")
    first = [(e, i) for i, e in enumerate([*todo.collect_events(), *todo_list.collect_events()])]
    before = fold_events({}, first)
    todo.rename_step(step, "renamed", actor="ann")
    todo_list.set_member("bo", "viewer", actor="ann")
    events = [*todo.collect_events(), *todo_list.collect_events()]
    later = [(e, 10 + i) for i, e in enumerate(events)]
    after = fold_events(before, later + first)  # replays of what a row has are no-ops
    todo_row, list_row = after[todo.id], after[todo_list.id]
    assert isinstance(todo_row, TodoRow)
    assert isinstance(list_row, ListRow)
    assert todo_row.steps[0]["text"] == "renamed"
    before_row = before[todo.id]
    assert isinstance(before_row, TodoRow)
    assert before_row.steps[0]["text"] == "s"  # the earlier row was not changed in place
    assert list_row.members == {"ann": "owner", "bo": "viewer"}
    assert (todo_row.position, list_row.position) == (10, 11)


def test_a_list_event_with_no_row_says_so() -> None:
    todo_list = TodoList.create(owner="ann", name="L")
    todo_list.rename("M", actor="ann")
    renamed = todo_list.collect_events()[1]
    with pytest.raises(MissingRow, match="TodoList"):
        fold_events({}, [(renamed, 2)])
