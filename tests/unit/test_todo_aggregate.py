"""The Todo aggregate's rules, with no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tododb.domain import (
    InvariantViolation,
    Todo,
    TodoDeletedError,
    event_payload,
    inbox_id,
    public_type,
)


def new_todo(**kwargs: object) -> Todo:
    fields: dict[str, object] = {"owner": "alice", "title": "Buy milk"}
    fields.update(kwargs)
    return Todo.create(**fields)  # type: ignore[arg-type]


def types(todo: Todo) -> list[str]:
    return [public_type(e) for e in todo.collect_events()]


def test_create_records_one_created_event_with_the_owner() -> None:
    todo = new_todo(title="  Buy milk  ", tags=["home", "shop", "home"], priority="high")
    events = todo.collect_events()
    assert [public_type(e) for e in events] == ["todos.task.created"]
    payload = event_payload(events[0])
    assert payload == {
        "owner": "alice",
        "title": "Buy milk",
        "description": "",
        "due": None,
        "priority": "high",
        "tags": ["home", "shop"],
        "list_id": str(inbox_id("alice")),
        "order_key": payload["order_key"],
        "actor": "alice",
        "assignee": None,
        "recurrence": None,
    }
    assert todo.owner == "alice"
    assert todo.list_id == inbox_id("alice")
    assert todo.status == "open"
    assert todo.version == 1


@pytest.mark.parametrize("title", ["", "   ", "x" * 201, " " + "x" * 201])
def test_title_must_be_1_to_200_characters_after_stripping(title: str) -> None:
    with pytest.raises(InvariantViolation) as e:
        new_todo(title=title)
    assert e.value.field == "title"


def test_title_of_200_characters_with_padding_is_accepted() -> None:
    assert new_todo(title="  " + "x" * 200 + "  ").title == "x" * 200


def test_description_limit() -> None:
    new_todo(description="d" * 10_000)
    with pytest.raises(InvariantViolation):
        new_todo(description="d" * 10_001)


@pytest.mark.parametrize(
    "tags",
    [
        [f"t{i}" for i in range(21)],
        ["UPPER"],
        ["with space"],
        [""],
        ["x" * 33],
        ["under_score"],
    ],
)
def test_invalid_tags_are_rejected(tags: list[str]) -> None:
    with pytest.raises(InvariantViolation) as e:
        new_todo(tags=tags)
    assert e.value.field == "tags"


def test_twenty_tags_of_32_characters_are_accepted() -> None:
    tags = [f"{i:02d}" + "a" * 30 for i in range(20)]
    assert len(new_todo(tags=tags).tags) == 20


def test_priority_must_be_known() -> None:
    with pytest.raises(InvariantViolation):
        new_todo(priority="urgent")


def test_due_must_be_time_zone_aware_and_is_normalised_to_utc() -> None:
    with pytest.raises(InvariantViolation):
        new_todo(due=datetime(2030, 1, 1, 12, 0))
    todo = new_todo(due=datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))))
    assert todo.due == datetime(2030, 1, 1, 10, 0, tzinfo=UTC)


def test_each_change_records_its_past_tense_event() -> None:
    todo = new_todo()
    todo.collect_events()
    due = datetime(2030, 1, 1, tzinfo=UTC)
    todo.change_title("Buy oat milk")
    todo.change_description("2 litres")
    todo.set_due(due)
    todo.set_due(None)
    todo.change_priority("low")
    todo.change_tags(["shop"])
    todo.complete()
    todo.reopen()
    todo.delete()
    assert types(todo) == [
        "todos.task.title_changed",
        "todos.task.description_changed",
        "todos.task.due_date_set",
        "todos.task.due_date_cleared",
        "todos.task.priority_changed",
        "todos.task.tags_changed",
        "todos.task.completed",
        "todos.task.reopened",
        "todos.task.deleted",
    ]
    assert todo.version == 10


def test_same_value_changes_and_repeated_completion_record_nothing() -> None:
    due = datetime(2030, 1, 1, tzinfo=UTC)
    todo = new_todo(description="d", due=due, priority="high", tags=["a", "b"])
    todo.collect_events()
    todo.change_title("  Buy milk ")
    todo.change_description("d")
    todo.set_due(due.astimezone(timezone(timedelta(hours=-5))))
    todo.change_priority("high")
    todo.change_tags(["b", "a", "a"])
    todo.reopen()  # open already
    assert types(todo) == []
    todo.complete()
    todo.complete()
    assert types(todo) == ["todos.task.completed"]
    todo.set_due(None)
    todo.set_due(None)
    assert types(todo) == ["todos.task.due_date_cleared"]


def test_completion_time_is_the_completed_event_time_and_reopen_clears_it() -> None:
    todo = new_todo()
    todo.complete()
    completed = todo.collect_events()[-1]
    assert todo.completed_at == completed.timestamp
    assert todo.status == "completed"
    todo.reopen()
    assert todo.completed_at is None
    assert todo.status == "open"


def test_deleted_todo_takes_no_further_commands_but_delete_is_idempotent() -> None:
    todo = new_todo()
    todo.delete()
    todo.collect_events()
    for command in (
        lambda: todo.change_title("x"),
        lambda: todo.change_description("x"),
        lambda: todo.set_due(None),
        lambda: todo.change_priority("low"),
        lambda: todo.change_tags([]),
        todo.complete,
        todo.reopen,
    ):
        with pytest.raises(TodoDeletedError):
            command()
    todo.delete()
    assert types(todo) == []


def test_idempotent_ids_are_per_owner_and_key() -> None:
    assert Todo.idempotent_id("alice", "k1") == Todo.idempotent_id("alice", "k1")
    assert Todo.idempotent_id("alice", "k1") != Todo.idempotent_id("bob", "k1")
    assert Todo.idempotent_id("alice", "k1") != Todo.idempotent_id("alice", "k2")
    todo = new_todo(id=Todo.idempotent_id("alice", "k1"))
    assert todo.id == Todo.idempotent_id("alice", "k1")


def test_aggregate_is_rebuilt_from_its_events() -> None:
    todo = new_todo(tags=["a"])
    todo.change_title("Renamed")
    todo.complete()
    events = todo.collect_events()
    copy = None
    for e in events:
        copy = e.mutate(copy)
    assert isinstance(copy, Todo)
    assert (copy.title, copy.tags, copy.status, copy.version) == ("Renamed", ["a"], "completed", 3)
    assert copy.completed_at == events[-1].timestamp


@pytest.mark.parametrize("owner", ["", "x" * 129, "x" * 10_000, "al\x00ice", "\ud800", "a b"])
def test_owner_must_be_a_usable_user_id(owner: str) -> None:
    with pytest.raises(InvariantViolation) as e:
        new_todo(owner=owner)
    assert e.value.field == "owner"


@pytest.mark.parametrize("bad", ["Buy\x00milk", "\ud800", "Buy milk\x1b", "\ufffe"])
def test_title_and_description_refuse_nul_controls_and_lone_surrogates(bad: str) -> None:
    with pytest.raises(InvariantViolation) as e:
        new_todo(title=bad)
    assert e.value.field == "title"
    with pytest.raises(InvariantViolation) as e:
        new_todo(description=bad)
    assert e.value.field == "description"
    todo = new_todo()
    todo.collect_events()
    with pytest.raises(InvariantViolation):
        todo.change_title(bad)
    with pytest.raises(InvariantViolation):
        todo.change_description(bad)
    assert types(todo) == []


def test_title_with_controls_at_its_edges_is_refused_not_stripped() -> None:
    # str.strip() removes \x1c-\x1f; the rule looks at the text as sent.
    with pytest.raises(InvariantViolation):
        new_todo(title="\x1fBuy milk\x1f")


def test_tabs_and_newlines_are_ordinary_text() -> None:
    todo = new_todo(title="Buy\tmilk", description="line 1\r\nline 2\n")
    assert (todo.title, todo.description) == ("Buy\tmilk", "line 1\r\nline 2\n")


def test_a_due_date_that_overflows_on_its_way_to_utc_is_an_invariant_violation() -> None:
    overflowing = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=23.99)))
    with pytest.raises(InvariantViolation) as e:
        new_todo(due=overflowing)
    assert e.value.field == "due"
    todo = new_todo()
    todo.collect_events()
    with pytest.raises(InvariantViolation):
        todo.set_due(overflowing)
    with pytest.raises(InvariantViolation):
        todo.set_due(datetime(1899, 12, 31, 23, 59, tzinfo=UTC))
    assert types(todo) == []


# ---- #11: moves, steps, assignee, actor ----------------------------------------------


def test_a_move_is_one_event_on_the_moving_todo() -> None:
    from uuid import uuid4

    from tododb.domain import key_between

    todo = new_todo()
    todo.collect_events()
    target = uuid4()
    key = key_between(None, todo.order_key, todo.id)
    todo.move(target, key, actor="bob")
    todo.move(target, key, actor="bob")  # already there: nothing
    events = todo.collect_events()
    assert [public_type(e) for e in events] == ["todos.task.moved"]
    assert (todo.list_id, todo.order_key, events[0].actor) == (target, key, "bob")  # type: ignore[attr-defined]


def test_steps_are_a_bounded_ordered_checklist() -> None:
    from uuid import uuid4

    from tododb.domain import StepNotFound
    from tododb.domain.invariants import STEPS_MAX

    todo = new_todo()
    first = todo.add_step(" Buy flour ", actor="alice")
    second = todo.add_step("Bake")
    todo.check_step(first)
    todo.rename_step(second, "Bake at 200C")
    todo.move_step(second, 0)
    assert todo.steps == [
        {"id": str(second), "text": "Bake at 200C", "done": False},
        {"id": str(first), "text": "Buy flour", "done": True},
    ]
    todo.check_step(first, done=False)
    todo.remove_step(second)
    assert todo.steps == [{"id": str(first), "text": "Buy flour", "done": False}]
    with pytest.raises(StepNotFound):
        todo.check_step(uuid4())
    with pytest.raises(InvariantViolation, match="text"):
        todo.add_step("\x00")
    for i in range(STEPS_MAX - 1):
        todo.add_step(f"step {i}")
    with pytest.raises(InvariantViolation, match="at most"):
        todo.add_step("one too many")


def test_assigning_and_unassigning() -> None:
    todo = new_todo(assignee="bob")
    assert todo.assignee == "bob"
    todo.collect_events()
    todo.assign("bob")
    todo.assign(None, actor="alice")
    todo.assign(None)
    assert [public_type(e) for e in todo.collect_events()] == ["todos.task.unassigned"]
    with pytest.raises(InvariantViolation):
        todo.assign("not a user id")


def test_deleting_with_its_list_says_so() -> None:
    todo = new_todo()
    todo.delete(actor="olga", reason="list_deleted")
    deleted = todo.collect_events()[-1]
    assert (deleted.reason, deleted.actor, todo.deleted) == ("list_deleted", "olga", True)  # type: ignore[attr-defined]
