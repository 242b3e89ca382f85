"""The domain's rules for text, user ids and due dates: what hostile input may not smuggle in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tododb.domain import InvariantViolation
from tododb.domain.invariants import (
    DUE_MAX,
    DUE_MIN,
    USER_ID_MAX,
    clean_due,
    clean_text,
    clean_user_id,
)


@pytest.mark.parametrize(
    "text",
    [
        "a\x00b",
        "\x01",
        "bell\x07",
        "\x0b",
        "\x0c",
        "esc\x1b[0m",
        "\x1f",
        "\ud800",
        "x\udfff",
        "\ufffe",
        "\uffff",
    ],
)
def test_text_with_controls_lone_surrogates_or_noncharacters_is_refused(text: str) -> None:
    with pytest.raises(InvariantViolation) as e:
        clean_text("title", text)
    assert e.value.field == "title"
    assert "U+" in e.value.message
    assert text not in e.value.message  # the input is never echoed back
    e.value.message.encode("utf-8")  # so the message itself can always be sent


@pytest.mark.parametrize(
    "text", ["", "tab\there", "lines\r\nand\n", "ünïcødé 😀 中文", "\u200b zero width", "\x7f"]
)
def test_ordinary_text_with_tab_and_newlines_is_kept_as_is(text: str) -> None:
    assert clean_text("description", text) == text


@pytest.mark.parametrize(
    "user_id",
    [
        "alice",
        "alice@example.com",
        "auth0|5f7c8ec7c33c6c004bbafe82",
        "0b5f7e3c-2d1a-4c8e-9f6b-3a2e1d4c5b6a",
        "google-oauth2:1234567890",
        "a.b_c~d+e=f",
        "x" * USER_ID_MAX,
    ],
)
def test_user_ids_of_emails_providers_and_guids_are_accepted(user_id: str) -> None:
    assert clean_user_id(user_id) == user_id


@pytest.mark.parametrize(
    "user_id",
    [
        "",
        "x" * (USER_ID_MAX + 1),
        "x" * 10_000,
        "al\x00ice",
        "\ud800",
        "with space",
        "trailing-newline\n",
        "slash/and\\backslash",
        "ünicode",
        "quote'",
    ],
)
def test_unusable_user_ids_are_refused(user_id: str) -> None:
    with pytest.raises(InvariantViolation) as e:
        clean_user_id(user_id)
    assert e.value.field == "owner"


def test_due_is_converted_to_utc() -> None:
    due = datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert clean_due(due) == datetime(2030, 1, 1, 10, 0, tzinfo=UTC)
    assert clean_due(due).tzinfo is UTC


@pytest.mark.parametrize(
    "due",
    [
        # overflows on the way to UTC (the outside tester's date)
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=23, minutes=59))),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),  # underflows
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),  # no room to show it east of UTC
        DUE_MAX + timedelta(microseconds=1),
        DUE_MIN - timedelta(microseconds=1),
        datetime(1, 1, 1, tzinfo=UTC),
    ],
)
def test_due_dates_outside_1900_to_9998_utc_are_refused(due: datetime) -> None:
    with pytest.raises(InvariantViolation) as e:
        clean_due(due)
    assert e.value.field == "due"


def test_due_range_bounds_are_inclusive_and_showable_in_any_time_zone() -> None:
    assert clean_due(DUE_MIN) == DUE_MIN
    assert clean_due(DUE_MAX) == DUE_MAX
    widest = timedelta(hours=23, minutes=59)
    for offset in (-widest, widest):
        for bound in (DUE_MIN, DUE_MAX):
            bound.astimezone(timezone(offset))  # no OverflowError
