"""Recurring todos: RRULEs read by dateutil, rolled on completion, refused when bad."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tododb.domain import InvariantViolation, Todo
from tododb.domain.recurrence import clean_recurrence, next_occurrence

MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def test_completing_a_daily_todo_rolls_its_due_date_and_keeps_it_open() -> None:
    todo = Todo.create(owner="ann", title="Water plants", due=MONDAY, recurrence="FREQ=DAILY")
    for day in range(30):
        todo.complete(actor="ann", now=MONDAY + timedelta(days=day, hours=-1))
    assert todo.due == MONDAY + timedelta(days=30)
    assert (todo.status, todo.completions) == ("open", 30)
    completions = [e for e in todo.collect_events() if isinstance(e, Todo.Completed)]
    assert [e.next_due for e in completions] == [MONDAY + timedelta(days=d + 1) for d in range(30)]


def test_a_late_completion_skips_the_missed_occurrences() -> None:
    todo = Todo.create(owner="ann", title="Report", due=MONDAY, recurrence="FREQ=WEEKLY;BYDAY=MO")
    todo.complete(now=MONDAY + timedelta(days=16))  # two weeks and two days late
    assert todo.due == MONDAY + timedelta(days=21)


def test_a_rule_with_a_count_completes_for_good_when_it_runs_out() -> None:
    todo = Todo.create(
        owner="ann", title="Three times", due=MONDAY, recurrence="FREQ=DAILY;COUNT=3"
    )
    for day in range(3):
        todo.complete(now=MONDAY + timedelta(days=day))
    assert (todo.status, todo.completions) == ("completed", 2)


def test_moving_the_due_date_moves_the_schedule() -> None:
    todo = Todo.create(owner="ann", title="Gym", due=MONDAY, recurrence="FREQ=WEEKLY")
    todo.set_due(MONDAY + timedelta(days=2))  # now on Wednesdays
    todo.complete(now=MONDAY)
    assert todo.due == MONDAY + timedelta(days=9)


@pytest.mark.parametrize(
    "rule",
    [
        "",
        "nonsense",
        "FREQ=HOURLY",
        "FREQ=SECONDLY",
        "FREQ=DAILY;BYSETPOS=1",
        "FREQ=DAILY;FREQ=WEEKLY",
        "FREQ=WEEKLY;BYDAY=XX",
        "FREQ=DAILY;INTERVAL=0",
        "FREQ=DAILY;COUNT=0",
        "DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY",
        "FREQ=DAILY;UNTIL=20200101T000000Z",
        "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=DAILY\x00",
        "FREQ=DAILY;" + "BYDAY=MO;" * 40,
    ],
)
def test_invalid_rules_are_refused(rule: str) -> None:
    with pytest.raises(InvariantViolation):
        clean_recurrence(rule, MONDAY)


def test_a_rule_needs_a_due_date() -> None:
    with pytest.raises(InvariantViolation, match="due date"):
        Todo.create(owner="ann", title="x", recurrence="FREQ=DAILY")
    todo = Todo.create(owner="ann", title="x", due=MONDAY, recurrence="FREQ=DAILY")
    with pytest.raises(InvariantViolation, match="needs its due date"):
        todo.set_due(None)


def test_rules_are_stored_in_one_canonical_form() -> None:
    assert clean_recurrence("RRULE:freq=weekly;byday=mo,we", MONDAY) == "FREQ=WEEKLY;BYDAY=MO,WE"


def test_rules_that_never_match_are_refused_quickly() -> None:
    """dateutil would look period by period up to the year 9999 (seconds of CPU)."""
    started = time.monotonic()
    for rule in ("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30", "FREQ=MONTHLY;BYMONTH=4;BYMONTHDAY=31"):
        with pytest.raises(InvariantViolation, match="never have"):
            clean_recurrence(rule, MONDAY)
    assert time.monotonic() - started < 0.5


def test_next_occurrence_is_none_past_until() -> None:
    rule = "FREQ=DAILY;UNTIL=20261202T090000Z"
    assert next_occurrence(rule, MONDAY, MONDAY, MONDAY) == MONDAY + timedelta(days=1)
    assert next_occurrence(rule, MONDAY, MONDAY + timedelta(days=2), MONDAY) is None
