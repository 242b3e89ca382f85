"""Quarantine's pieces that need no database: decoding, grouping, what counts as a fault."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing import persistence
from eventsourcing.persistence import StoredEvent
from psycopg_pool import PoolTimeout

from tododb.domain import Todo
from tododb.projections.quarantine import (
    MAX_ERROR,
    ProjectionApplication,
    QuarantineTable,
    TodoEvents,
    Undecodable,
    describe,
    is_event_fault,
    split,
)
from tododb.projections.rows import MissingRow, fold_events

RENAMED = "tododb.domain.todo:Todo.Renamed"


@pytest.fixture
def app() -> Iterator[ProjectionApplication]:
    app = ProjectionApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield app
    app.close()


def events_of(todo: Todo) -> list[Any]:
    return list(todo.collect_events())


def a_todo(title: str = "t") -> Todo:
    todo = Todo.create(owner="u", title=title)
    todo.complete()
    return todo


def test_the_projection_application_reads_the_same_log_under_the_same_name(app: Any) -> None:
    assert app.name == "todos"


def test_an_event_that_cannot_be_decoded_comes_out_as_a_placeholder(app: Any) -> None:
    [created, completed] = [app.mapper.to_stored_event(e) for e in events_of(a_todo())]
    assert isinstance(app.mapper.to_domain_event(created), Todo.Created)
    unknown = StoredEvent(completed.originator_id, 2, RENAMED, completed.state)
    garbled = StoredEvent(completed.originator_id, 2, completed.topic, b"\xff not json")
    for stored, error in ((unknown, "TopicError"), (garbled, "MapperDeserialisationError")):
        event = app.mapper.to_domain_event(stored)
        assert isinstance(event, Undecodable)
        assert (event.originator_id, event.originator_version) == (completed.originator_id, 2)
        assert event.topic == stored.topic
        assert event.error.startswith(error)


def test_a_batch_is_grouped_by_todo_in_order_with_held_and_undecodable_events() -> None:
    a, b, c = uuid4(), uuid4(), uuid4()
    bad = Undecodable(b, 2, RENAMED, "TopicError: no")
    events = [(Ev(a, 1), 1), (Ev(b, 1), 2), (bad, 3), (Ev(c, 5), 4), (Ev(b, 3), 5), (Ev(a, 2), 6)]
    groups = {g.todo_id: g for g in split(events, quarantined={c})}
    assert [p for p, _ in groups[a].applicable] == [Ev(a, 1), Ev(a, 2)]
    assert groups[b].failed_at == 1
    assert groups[b].applicable == [(Ev(b, 1), 2)]
    assert groups[b].head_row() == (b, 2, 3, RENAMED, "TopicError: no", 1)
    assert groups[c].held_behind
    assert groups[c].applicable == []


def test_the_earliest_failure_is_the_head() -> None:
    todo = a_todo()
    group = TodoEvents(todo.id)
    for position, event in enumerate(events_of(todo), start=7):
        group.add((event, position))
    group.fail(1, "late")
    group.fail(0, "early")
    group.fail(1, "later still")
    assert group.head_row() == (todo.id, 1, 7, "tododb.domain.todo:Todo.Created", "early", 1)


def test_only_undecodable_events_and_quarantined_todos_leave_the_fast_path() -> None:
    table = QuarantineTable("readmodels", "todos_g1_quarantine")
    a, b = uuid4(), uuid4()
    batch = [(Ev(a, 1), 1)]
    assert not table.touches(batch)
    table.ids = {b}
    assert not table.touches(batch)
    assert table.touches([*batch, (Ev(b, 2), 2)])
    assert table.touches([(Undecodable(a, 2, RENAMED, "e"), 3)])


@pytest.mark.parametrize(
    "error",
    [
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
        psycopg.errors.NotNullViolation("null value in column"),
        persistence.DataError("wrapped"),
        persistence.IntegrityError("wrapped"),
        AttributeError("an event of an unknown shape"),
        ValueError("'urgent' is not a valid Priority"),
        MissingRow("no row"),
    ],
)
def test_the_events_own_faults_quarantine(error: BaseException) -> None:
    assert is_event_fault(error)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection refused"),
        PoolTimeout("couldn't get a connection after 5.00 sec"),
        psycopg.errors.UndefinedTable("relation does not exist"),
        persistence.OperationalError("wrapped"),
        persistence.ProgrammingError("wrapped"),
        persistence.PersistenceError("any other"),
        ConnectionResetError("reset"),
    ],
)
def test_infrastructure_errors_never_quarantine(error: BaseException) -> None:
    assert not is_event_fault(error)


def test_an_error_is_stored_without_nul_and_bounded() -> None:
    assert describe(ValueError("a\x00b")) == "ValueError: a\\x00b"
    assert describe(ValueError("a\ud800b")) == "ValueError: a\\ud800b"
    assert len(describe(ValueError("x" * 10 * MAX_ERROR))) == MAX_ERROR


def test_an_event_for_a_todo_with_no_row_says_so() -> None:
    completed = events_of(a_todo())[1]
    with pytest.raises(MissingRow, match="skipped or never applied"):
        fold_events({}, [(completed, 2)])


class Ev:
    """A stand-in event: only its todo and version matter to the grouping."""

    def __init__(self, originator_id: UUID, originator_version: int) -> None:
        self.originator_id = originator_id
        self.originator_version = originator_version

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ev) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.originator_id, self.originator_version))
