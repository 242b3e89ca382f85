"""Validation rules of a todo. Kept apart so the API can document the same limits."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from tododb.domain.errors import InvariantViolation

TITLE_MAX = 200
DESCRIPTION_MAX = 10_000
TAGS_MAX = 20
TAG_MAX = 32
TAG_PATTERN = re.compile(r"^[a-z0-9-]{1,32}$")
PRIORITIES = ("low", "normal", "high")


def clean_title(title: str) -> str:
    stripped = title.strip()
    if not 1 <= len(stripped) <= TITLE_MAX:
        raise InvariantViolation(
            "title", f"must be 1-{TITLE_MAX} characters after stripping white space"
        )
    return stripped


def clean_description(description: str) -> str:
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


def clean_due(due: datetime) -> datetime:
    """Due dates are instants: a naive datetime is ambiguous, so it is refused."""
    if due.tzinfo is None or due.utcoffset() is None:
        raise InvariantViolation("due", "must carry a time zone offset")
    return due.astimezone(UTC)
