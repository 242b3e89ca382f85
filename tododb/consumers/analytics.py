"""Analytics: per user and per day, how many todos were created, completed, reopened and
deleted, and the mean time from creation to completion.

Totals must equal what the event store holds, also after redeliveries: every counter
update commits together with the event's inbox row (see ``core``), so each event counts
exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier

from tododb.consumers.core import AsyncConn
from tododb.consumers.ddl import inbox_ddl
from tododb.relay.envelope import TodoEvent

SCHEMA = "analytics"

DDL = (
    "CREATE SCHEMA IF NOT EXISTS analytics",
    inbox_ddl(SCHEMA),
    "CREATE TABLE IF NOT EXISTS analytics.daily ("
    "owner text NOT NULL, day date NOT NULL, "
    "created integer NOT NULL DEFAULT 0, completed integer NOT NULL DEFAULT 0, "
    "reopened integer NOT NULL DEFAULT 0, deleted integer NOT NULL DEFAULT 0, "
    "completion_seconds_total double precision NOT NULL DEFAULT 0, "
    "completions_timed integer NOT NULL DEFAULT 0, "
    "PRIMARY KEY (owner, day))",
    # When each todo was created, to time its completions.
    "CREATE TABLE IF NOT EXISTS analytics.todos ("
    "todo_id uuid PRIMARY KEY, owner text NOT NULL, created_at timestamptz NOT NULL)",
)

_COUNTED = {
    "todos.task.created": "created",
    "todos.task.completed": "completed",
    "todos.task.reopened": "reopened",
    "todos.task.deleted": "deleted",
}

# One statement per counter: column names cannot be query parameters.
_BUMP = {
    column: SQL(
        "INSERT INTO analytics.daily (owner, day, {column}) VALUES (%s, %s, 1) "
        "ON CONFLICT (owner, day) DO UPDATE SET {column} = analytics.daily.{column} + 1"
    ).format(column=Identifier(column))
    for column in _COUNTED.values()
}


class AnalyticsHandler:
    name = SCHEMA

    def ddl(self) -> Sequence[str]:
        return DDL

    async def handle(self, conn: AsyncConn, event: TodoEvent) -> None:
        column = _COUNTED.get(event.type)
        if column is None:
            return
        day = event.time.astimezone(UTC).date()
        await conn.execute(_BUMP[column], (event.owner, day))
        if column == "created":
            await conn.execute(
                "INSERT INTO analytics.todos (todo_id, owner, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (todo_id) DO NOTHING",
                (event.todo_id, event.owner, event.time),
            )
        elif column == "completed":
            # Same key, same partition: the created event was handled before this one.
            await conn.execute(
                "UPDATE analytics.daily d SET "
                "completion_seconds_total = d.completion_seconds_total "
                "  + extract(epoch FROM (%s::timestamptz - t.created_at)), "
                "completions_timed = d.completions_timed + 1 "
                "FROM analytics.todos t WHERE t.todo_id = %s AND d.owner = %s AND d.day = %s",
                (event.time, event.todo_id, event.owner, day),
            )


def daily_figures(
    conn: psycopg.Connection[Any], owner: str, start: date, end: date
) -> list[dict[str, Any]]:
    """The owner's figures per day in [start, end], days without activity left out."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT day, created, completed, reopened, deleted, "
            "completion_seconds_total, completions_timed FROM analytics.daily "
            "WHERE owner = %s AND day BETWEEN %s AND %s ORDER BY day",
            (owner, start, end),
        )
        rows = cur.fetchall()
    return [
        {
            "day": row["day"].isoformat(),
            "created": row["created"],
            "completed": row["completed"],
            "reopened": row["reopened"],
            "deleted": row["deleted"],
            "mean_completion_seconds": (
                row["completion_seconds_total"] / row["completions_timed"]
                if row["completions_timed"]
                else None
            ),
        }
        for row in rows
    ]


def today() -> date:
    return datetime.now(UTC).date()
