"""Lag behind the event log, in events and in seconds.

In events: the events stored after the position a follower (a projection, the relay) has
processed, counted up to ``COUNTED`` (beyond that, the log's head minus the position: the
positions behind, which also counts the ids that lost races burned). In seconds: the age
of the oldest event it has not processed yet, the first one after its position, from the
event's own timestamp (in its stored state: the library's JSON, ``{"timestamp":
{"_type_": "datetime_iso", "_data_": "..."}, ...}``). A follower that is caught up has a
lag of 0 and 0 seconds, however old the head is.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

COUNTED = 10_000
"""Events behind counted one by one (a range scan of the position index, at most this
many rows: the newest, whose pages are rarely all-visible yet, so the rows are read)."""
SCAN = 10
"""Events after the position read for a timestamp (one that cannot be read is skipped)."""
_TIMESTAMP = re.compile(rb'"timestamp":\s*\{[^}]*"_data_":\s*"([^"]+)"')


@dataclass(frozen=True)
class Lag:
    position: int
    head: int
    events: int
    seconds: float
    """Age of the oldest unprocessed event; 0 when caught up."""
    oldest_unprocessed_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def event_timestamp(state: bytes) -> datetime | None:
    """The domain event's timestamp from its stored state, None if it cannot be read."""
    try:
        found = json.loads(state).get("timestamp")
        text = found.get("_data_") if isinstance(found, dict) else found
    except (ValueError, AttributeError, UnicodeDecodeError):
        match = _TIMESTAMP.search(state[:512])
        text = match.group(1).decode() if match else None
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def log_lag(
    conn: psycopg.Connection[Any],
    schema: str,
    events_table: str,
    position: int,
    head: int | None = None,
    now: datetime | None = None,
) -> Lag:
    """``position``'s lag behind the log in ``schema.events_table`` (0 if it does not exist)."""
    table = Identifier(schema, events_table)
    exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{events_table}"',)).fetchone()
    if not exists or _first(exists) is None:
        return Lag(position, 0, 0, 0.0, None)
    if head is None:
        row = conn.execute(SQL("SELECT max(notification_id) FROM {}").format(table)).fetchone()
        head = int(_first(row) or 0) if row else 0
    if head <= position:
        return Lag(position, head, 0, 0.0, None)
    events = _events_after(conn, table, position, head)
    rows = conn.execute(
        SQL(
            "SELECT state FROM {} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(table),
        (position, SCAN),
    ).fetchall()
    oldest = None
    for row in rows:
        oldest = event_timestamp(bytes(_first(row)))
        if oldest is not None:
            break
    now = now or datetime.now(UTC)
    seconds = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
    return Lag(position, head, events, seconds, oldest)


def _events_after(
    conn: psycopg.Connection[Any], table: Identifier, position: int, head: int
) -> int:
    """How many events are stored after ``position`` up to ``head``: exact up to
    ``COUNTED``, else ``head - position``. Positions have gaps (an id drawn by an insert
    that lost a race is never used), so the difference alone overstates the lag."""
    row = conn.execute(
        SQL(
            "SELECT count(*) FROM (SELECT 1 FROM {} WHERE notification_id > %s "
            "AND notification_id <= %s LIMIT %s) AS behind"
        ).format(table),
        (position, head, COUNTED),
    ).fetchone()
    counted = int(_first(row)) if row else 0
    return counted if counted < COUNTED else head - position


def _first(row: Any) -> Any:
    """The first column of a tuple row or a dict row."""
    if isinstance(row, dict):
        return next(iter(row.values()))
    return row[0]


def log_head(conn: psycopg.Connection[Any], schema: str, events_table: str) -> int:
    """The log's last position (0 if empty or not created yet)."""
    exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{events_table}"',)).fetchone()
    if not exists or _first(exists) is None:
        return 0
    table = Identifier(schema, events_table)
    row = conn.execute(SQL("SELECT max(notification_id) FROM {}").format(table)).fetchone()
    return int(_first(row) or 0) if row else 0
