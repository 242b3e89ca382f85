"""Order keys: a todo's place in its list, as a string that sorts (byte-wise) between its
neighbours', so a move rewrites one todo and never its neighbours.

Keys are fractional indexes (``fractional_indexing``, after David Greenspan's scheme) plus a
fixed-length suffix unique to the todo. Two moves that land between the same neighbours at
once compute the same fractional part, but their suffixes differ, so no two todos ever share
a key and the order stays total. Keys compare in byte order: PostgreSQL columns holding them
use ``COLLATE "C"``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from fractional_indexing import BASE_62_DIGITS, generate_key_between

_SUFFIX_DIGITS = 22  # 62**22 > 2**128: a UUID in base 62
_TIME_HEAD = "k"  # an integer part of 11 base-62 digits: microseconds since 1970 fit
_TIME_DIGITS = 11
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_PAIRS = [a + b for a in BASE_62_DIGITS for b in BASE_62_DIGITS]
"""Every two-digit base-62 string, by value: a key is made two digits per division."""


def _base62(number: int, width: int) -> str:
    """``number`` in exactly ``width`` base-62 digits (leading zeros kept)."""
    pairs: list[str] = []
    for _ in range(width // 2):
        number, pair = divmod(number, 3844)
        pairs.append(_PAIRS[pair])
    if width % 2:
        number, digit = divmod(number, 62)
        pairs.append(BASE_62_DIGITS[digit])
    if number:
        raise OverflowError(f"does not fit in {width} base-62 digits")
    return "".join(reversed(pairs))


def unique_suffix(todo_id: UUID) -> str:
    """The todo's own suffix; never ends in "0" (a fractional index may not)."""
    return _base62(todo_id.int, _SUFFIX_DIGITS) + "V"


def creation_key(created_at: datetime, todo_id: UUID) -> str:
    """A new todo goes to the end of its list: keys of later creations sort later.

    A key from the clock needs no read of the list, so creating a todo stays one append.
    """
    micros = max(0, (created_at.astimezone(UTC) - _EPOCH) // _MICROSECOND)
    return _TIME_HEAD + _base62(micros, _TIME_DIGITS) + unique_suffix(todo_id)


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - _EPOCH


def key_between(lower: str | None, upper: str | None, todo_id: UUID) -> str:
    """A key for ``todo_id`` strictly between ``lower`` and ``upper`` (None: open end).

    The fractional part is moved past any prefix of ``upper`` (at most ``len(upper)``
    steps), so appending the suffix cannot carry the key past ``upper``.
    """
    if lower is not None and upper is not None and lower >= upper:
        raise ValueError(f"{lower!r} does not sort before {upper!r}")
    middle: str = generate_key_between(lower, upper)
    while upper is not None and upper.startswith(middle):
        middle = generate_key_between(middle, upper)
    return middle + unique_suffix(todo_id)
