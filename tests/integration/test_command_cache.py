"""A process decides on the todos it has just stored without reading them, and a stale one
(another process wrote since) never decides anything: only a stored outcome stands.

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
    """Counts the event store reads an application makes."""

    def __init__(self, app: TodoApplication) -> None:
        self.count = 0
        select = app.recorder.select_events

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return select(*args, **kwargs)

        app.recorder.select_events = counted  # type: ignore[method-assign]


def test_a_command_on_a_todo_this_process_just_stored_reads_nothing(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="first").todo
    reads = Reads(fresh_app)
    fresh_app.update_todo("ann", todo.id, {"title": "second"})
    result = fresh_app.complete_todo("ann", todo.id)
    assert reads.count == 0
    assert result.recorded
    stored = other.get_todo("ann", todo.id)
    assert (stored.title, stored.status.value, stored.version) == ("second", "completed", 3)


def test_a_todo_another_process_changed_is_decided_again_on_what_is_stored(
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


def test_if_match_is_judged_against_the_store_not_the_cache(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="v1").todo
    other.update_todo("ann", todo.id, {"title": "v2"})
    # The cache holds version 1; the client saw version 2: accepted.
    assert fresh_app.update_todo("ann", todo.id, {"title": "v3"}, expected_version=2).recorded
    other.update_todo("ann", todo.id, {"title": "v4"})
    # The cache holds version 3, as the client does; the store is at 4: 412, saying 4.
    with pytest.raises(PreconditionFailed) as failed:
        fresh_app.update_todo("ann", todo.id, {"title": "lost"}, expected_version=3)
    assert failed.value.current_version == 4
    assert other.get_todo("ann", todo.id).title == "v4"


def test_refusals_and_no_ops_earned_by_stale_state_are_decided_again(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="steps").todo
    _, step_id = other.add_step("ann", todo.id, "added elsewhere")
    # This process has never seen the step: its cached todo would say "no such step".
    assert fresh_app.update_step("ann", todo.id, step_id, done=True).recorded
    assert fresh_app.complete_todo("ann", todo.id).recorded
    other.reopen_todo("ann", todo.id)
    # The cached todo is done, so completing it would be a no-op: it is not, in the store.
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


def test_a_command_that_fails_leaves_nothing_half_decided_in_the_cache(
    fresh_app: TodoApplication, other: TodoApplication
) -> None:
    todo = fresh_app.create_todo("ann", title="clean").todo
    with pytest.raises(InvariantViolation):
        fresh_app.update_todo("ann", todo.id, {"title": "ok", "assignee": "stranger"})
    result = fresh_app.update_todo("ann", todo.id, {"priority": "low"})
    assert (result.todo.title, result.todo.version) == ("clean", 2)
    assert other.get_todo("ann", todo.id).title == "clean"
