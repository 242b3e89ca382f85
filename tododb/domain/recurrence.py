"""Recurring todos: RFC 5545 ``RRULE`` values, read by python-dateutil.

A rule recurs from its *anchor*, the due date when it was set (or last moved). Completing
a recurring todo rolls its due date to the next occurrence after both the current due date
and the moment of completion, so a late completion leaves no string of past occurrences.

dateutil looks for an occurrence period by period up to the year 9999, so a rule that can
never match (``FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30``) costs seconds of CPU. Rules are
therefore limited to the parts people use, and a date the calendar never has is refused
before dateutil ever iterates.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

from dateutil.rrule import DAILY, MONTHLY, WEEKLY, YEARLY, rrule, rrulestr

from tododb.domain.errors import InvariantViolation
from tododb.domain.invariants import DUE_MAX, clean_text

RULE_MAX = 256
HORIZON = timedelta(days=366 * 10)
"""The first occurrence must come within ten years of the due date."""
ALLOWED_PARTS = ("FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "BYMONTHDAY", "BYMONTH", "WKST")
_FREQUENCIES = {DAILY, WEEKLY, MONTHLY, YEARLY}
_PREFIX = "RRULE:"


def _bad(message: str) -> InvariantViolation:
    return InvariantViolation("recurrence", message)


def _text(rule: str) -> str:
    text = rule.strip().upper()
    return text[len(_PREFIX) :] if text.startswith(_PREFIX) else text


def _check_parts(text: str) -> None:
    parts = [p.partition("=") for p in text.split(";") if p]
    names = [name for name, _, _ in parts]
    unknown = sorted(set(names) - set(ALLOWED_PARTS))
    if unknown or len(names) != len(set(names)) or not names:
        raise _bad(f"may use each of {', '.join(ALLOWED_PARTS)} once (and nothing else)")
    values = {name: value for name, _, value in parts}
    if "INTERVAL" in values and not (
        values["INTERVAL"].isdigit() and 1 <= int(values["INTERVAL"]) <= 1000
    ):
        raise _bad("INTERVAL must be 1-1000")
    if "COUNT" in values and not (
        values["COUNT"].isdigit() and 1 <= int(values["COUNT"]) <= 10_000
    ):
        raise _bad("COUNT must be 1-10000")
    if "BYMONTHDAY" in values:
        _check_calendar(values["BYMONTHDAY"], values.get("BYMONTH"))


def _numbers(text: str, lowest: int, highest: int, part: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        raise _bad(f"{part} must be a list of numbers") from None
    if not numbers or any(not lowest <= abs(n) <= highest or n == 0 for n in numbers):
        raise _bad(f"{part} must be numbers from {lowest} to {highest} (or negative)")
    return numbers


def _check_calendar(monthdays: str, months: str | None) -> None:
    """Some month named by BYMONTH (any, without it) must have some BYMONTHDAY."""
    days = _numbers(monthdays, 1, 31, "BYMONTHDAY")
    in_months = range(1, 13) if months is None else _numbers(months, 1, 12, "BYMONTH")
    longest = {m: calendar.monthrange(2024, m)[1] for m in range(1, 13)}  # a leap year
    if not any(abs(d) <= longest[abs(m)] for m in in_months for d in days):
        raise _bad("names a day its months never have")


def _parse(text: str, anchor: datetime) -> rrule:
    try:
        parsed = rrulestr(text, dtstart=anchor)
    except (ValueError, TypeError, OverflowError) as e:
        raise _bad(f"is not a valid RRULE: {e}") from None
    if not isinstance(parsed, rrule) or getattr(parsed, "_freq", None) not in _FREQUENCIES:
        raise _bad("FREQ must be DAILY, WEEKLY, MONTHLY or YEARLY")
    return parsed


def clean_recurrence(rule: str, due: datetime | None) -> str:
    """The rule as stored (upper case, no ``RRULE:`` prefix). It needs a due date to recur
    from, and an occurrence after it within ``HORIZON``."""
    clean_text("recurrence", rule)
    if len(rule) > RULE_MAX:
        raise _bad(f"must be at most {RULE_MAX} characters")
    if due is None:
        raise _bad("needs a due date to recur from")
    text = _text(rule)
    _check_parts(text)
    _parse(text, due)
    if next_occurrence(text, due, due, due) is None:
        raise _bad("has no occurrence within ten years of the due date")
    return text


def next_occurrence(
    rule: str, anchor: datetime, due: datetime, completed_at: datetime
) -> datetime | None:
    """The rule's first occurrence after ``max(due, completed_at)``; None when it has ended
    (COUNT, UNTIL) or has none within ``HORIZON`` of that."""
    after = max(due, completed_at)
    limit = min(after + HORIZON, DUE_MAX)
    if after >= limit:
        return None
    for occurrence in _parse(rule, anchor):
        if occurrence > limit:
            return None
        if occurrence > after:
            found: datetime = occurrence
            return found
    return None
