"""Validation rules of a todo. Kept apart so the API can apply and document the same limits.

The API checks requests with these same functions before anything reaches the
application, and the aggregate checks them again, so no entry point can bypass them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from tododb.domain.errors import InvariantViolation

TITLE_MAX = 200
DESCRIPTION_MAX = 10_000
TAGS_MAX = 20
TAG_MAX = 32
TAG_PATTERN = re.compile(r"^[a-z0-9-]{1,32}$")
PRIORITIES = ("low", "normal", "high")
USER_ID_MAX = 128
USER_ID_PATTERN = re.compile(rf"[A-Za-z0-9._~@:|+=-]{{1,{USER_ID_MAX}}}")
DUE_MIN = datetime(1900, 1, 1, tzinfo=UTC)
DUE_MAX = datetime(9999, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)

# Characters text may not carry: C0 controls but tab, newline and carriage return; lone
# surrogates, which UTF-8, JSON and PostgreSQL cannot hold; the noncharacters U+FFFE/FFFF.
_FORBIDDEN_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean_text(field: str, value: str) -> str:
    """Text that becomes data must survive every store and wire format it will cross.

    A NUL stored in an event would poison every projection (PostgreSQL ``text`` cannot
    hold it) and a lone surrogate cannot even be encoded, so both are refused here.
    The message names the code point, never the input: echoing it could fail again.
    """
    bad = _FORBIDDEN_IN_TEXT.search(value)
    if bad is not None:
        code = f"U+{ord(bad.group()):04X}"
        raise InvariantViolation(
            field, f"must not contain control characters or lone surrogates (found {code})"
        )
    return value


def clean_user_id(user_id: str) -> str:
    """User ids key every read model and index, so they are short and plain.

    1-128 characters of ``A-Z a-z 0-9 . _ ~ @ : | + = -``: enough for emails,
    ``auth0|abc``-style subjects and GUIDs.
    """
    if not USER_ID_PATTERN.fullmatch(user_id):
        raise InvariantViolation(
            "owner",
            f"must be 1-{USER_ID_MAX} characters of A-Z, a-z, 0-9 and . _ ~ @ : | + = -",
        )
    return user_id


def clean_title(title: str) -> str:
    stripped = clean_text("title", title).strip()
    if not 1 <= len(stripped) <= TITLE_MAX:
        raise InvariantViolation(
            "title", f"must be 1-{TITLE_MAX} characters after stripping white space"
        )
    return stripped


def clean_description(description: str) -> str:
    clean_text("description", description)
    if len(description) > DESCRIPTION_MAX:
        raise InvariantViolation("description", f"must be at most {DESCRIPTION_MAX} characters")
    return description


def clean_priority(priority: str) -> str:
    if priority not in PRIORITIES:
        raise InvariantViolation("priority", f"must be one of {', '.join(PRIORITIES)}")
    return priority


def clean_tags(tags: Iterable[str]) -> list[str]:
    """Tags are a set: duplicates collapse, and the canonical form is sorted."""
    unique = sorted(set(tags))
    if len(unique) > TAGS_MAX:
        raise InvariantViolation("tags", f"at most {TAGS_MAX} tags")
    for tag in unique:
        if not TAG_PATTERN.fullmatch(tag):
            raise InvariantViolation(
                "tags", f"{tag!r} must be 1-{TAG_MAX} characters of a-z, 0-9 and '-'"
            )
    return unique


def clean_due(due: datetime, *, field: str = "due") -> datetime:
    """Due dates are instants, stored in UTC, between 1900-01-01 and the end of 9998 (UTC).

    A naive datetime is ambiguous, so it is refused. The upper bound keeps a year's margin
    below Python's year 9999, so a due date can be shown in any time zone (a database
    session's, a client's) without overflowing; ``9999-12-31T23:59:59-23:59`` overflows
    already on the way to UTC.
    """
    if due.tzinfo is None or due.utcoffset() is None:
        raise InvariantViolation(field, "must carry a time zone offset")
    try:
        utc = due.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not DUE_MIN <= utc <= DUE_MAX:
        raise InvariantViolation(field, "must be between 1900-01-01 and 9998-12-31 (UTC)")
    return utc


LIST_NAME_MAX = 100
STEP_TEXT_MAX = 500
STEPS_MAX = 100
MEMBERS_MAX = 100


def clean_list_name(name: str) -> str:
    stripped = clean_text("name", name).strip()
    if not 1 <= len(stripped) <= LIST_NAME_MAX:
        raise InvariantViolation(
            "name", f"must be 1-{LIST_NAME_MAX} characters after stripping white space"
        )
    return stripped


def clean_step_text(text: str) -> str:
    stripped = clean_text("text", text).strip()
    if not 1 <= len(stripped) <= STEP_TEXT_MAX:
        raise InvariantViolation(
            "text", f"must be 1-{STEP_TEXT_MAX} characters after stripping white space"
        )
    return stripped
