"""A process decides on the todos it has just stored without reading them again, and
never on a stale copy, whoever else writes: an append proves the copy current, and a
decision that appends nothing is checked against the store.

Two applications on one database stand for two API processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tododb.application import PreconditionFailed, TodoApplication, TodoGone
from tododb.domain import InvariantViolation
from tododb.entrypoints.bootstrap import build_application
from tododb.infra.settings import Settings


@pytest.fixture
def other(settings: Settings, fresh_database_url: str) -> Iterator[TodoApplication]:
    """A second process's application on the same event store."""
    app = build_application(settings, fresh_database_url)
    yield app
    app.close()


class Reads:
    """Records the event store reads an application makes (their ``gt`` argument)."""

    def __init__(self, app: TodoApplication) -> None:
        self.after: list[int | None] = []
        select = app.recorder.select_events

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.after.append(kwargs.get("gt"))
            return select(*args, **kwargs)

        app.recorder.select_events = recorded  # type: ignore[method-assign]


def test_a_todo_this_process_just_stored_needs_no_read(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="first").todo
    reads = Reads(fresh_app)
    fresh_app.update_todo("ann", todo.id, {"title": "second"})
    result = fresh_app.complete_todo("ann", todo.id)
    assert reads.after == []  # each append proved this process's copy current
    assert result.recorded
    stored = other.get_todo("ann", todo.id)
    assert (stored.title, stored.status.value, stored.version) == ("second", "completed", 3)


def test_a_todo_another_process_changed_is_decided_on_what_is_stored(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="mine").todo
    other.update_todo("ann", todo.id, {"title": "theirs"})
    result = fresh_app.update_todo("ann", todo.id, {"priority": "high"})
    assert (result.todo.title, result.todo.priority.value, result.todo.version) == (
        "theirs",
        "high",
        3,
    )
    stored = other.get_todo("ann", todo.id)
    assert (stored.title, stored.priority.value, stored.version) == ("theirs", "high", 3)


def test_if_match_is_judged_against_the_store_not_the_copy(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="v1").todo
    other.update_todo("ann", todo.id, {"title": "v2"})
    # This process's copy is at version 1; the client saw version 2: accepted.
    assert fresh_app.update_todo("ann", todo.id, {"title": "v3"}, expected_version=2).recorded
    other.update_todo("ann", todo.id, {"title": "v4"})
    # The copy is at version 3, as the client is; the store is at 4: 412, saying 4.
    with pytest.raises(PreconditionFailed) as failed:
        fresh_app.update_todo("ann", todo.id, {"title": "lost"}, expected_version=3)
    assert failed.value.current_version == 4
    assert other.get_todo("ann", todo.id).title == "v4"


def test_what_another_process_stored_is_seen_before_deciding(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="steps").todo
    _, step_id = other.add_step("ann", todo.id, "added elsewhere")
    # This process's copy has never seen the step.
    assert fresh_app.update_step("ann", todo.id, step_id, done=True).recorded
    assert fresh_app.complete_todo("ann", todo.id).recorded
    other.reopen_todo("ann", todo.id)
    # This process's copy says done, the store says reopened: completing is recorded.
    again = fresh_app.complete_todo("ann", todo.id)
    assert (again.recorded, again.todo.version) == (True, 6)
    other.delete_todo("ann", todo.id)
    with pytest.raises(TodoGone):
        fresh_app.update_todo("ann", todo.id, {"title": "too late"})


def test_results_are_not_changed_by_later_commands(fresh_app: TodoApplication) -> None:
    created = fresh_app.create_todo("ann", title="one")
    result, step_id = fresh_app.add_step("ann", created.todo.id, "a step")
    later = fresh_app.update_step("ann", created.todo.id, step_id, done=True)
    renamed = fresh_app.update_todo("ann", created.todo.id, {"title": "two"})
    assert (created.todo.title, created.todo.version) == ("one", 1)
    assert result.todo.steps[0]["done"] is False
    assert later.todo.steps[0]["done"] is True
    assert (later.todo.title, renamed.todo.title) == ("one", "two")


def test_a_command_that_fails_leaves_nothing_half_decided_behind(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="clean").todo
    with pytest.raises(InvariantViolation):
        fresh_app.update_todo("ann", todo.id, {"title": "ok", "assignee": "stranger"})
    result = fresh_app.update_todo("ann", todo.id, {"priority": "low"})
    assert (result.todo.title, result.todo.version) == ("clean", 2)
    assert other.get_todo("ann", todo.id).title == "clean"


def test_a_stale_copy_that_would_change_nothing_is_checked_against_the_store(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="mine").todo
    other.update_todo("ann", todo.id, {"title": "theirs"})
    reads = Reads(fresh_app)
    # This process's copy already says "mine": no event to append, so nothing would
    # prove the copy current. The store says "theirs": the rename back is recorded.
    result = fresh_app.update_todo("ann", todo.id, {"title": "mine"})
    assert (result.recorded, result.todo.title, result.todo.version) == (True, "mine", 3)
    assert reads.after[0] == 1  # the check: anything newer than the copy's version?
    assert other.get_todo("ann", todo.id).title == "mine"
    # Fresh and unchanged: answered as unchanged, after the same check.
    again = fresh_app.update_todo("ann", todo.id, {"title": "mine"})
    assert (again.recorded, again.todo.version) == (False, 3)


def test_a_stale_copy_that_refuses_is_checked_against_the_store(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="gone soon").todo
    fresh_app.delete_todo("ann", todo.id)
    # This process's copy is deleted; were the store's todo changed since, the refusal
    # would be re-decided on it. Here the store agrees: 410 stands.
    with pytest.raises(TodoGone):
        fresh_app.update_todo("ann", todo.id, {"title": "too late"})
    with pytest.raises(TodoGone):  # the other process agrees, and nothing was appended
        other.get_todo("ann", todo.id)
    assert other.get_todo("ann", todo.id, version=2).deleted
    assert len(other.list_events("ann", todo.id)) == 2
