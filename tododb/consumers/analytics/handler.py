"""Analytics: per user and per day, how many of their todos were created, completed,
reopened and deleted, and the mean time from creation to completion; and per actor (the
user who acted, on their own todos or on a shared list's), per day, how many events of
each type they caused.

Totals must equal what the event store holds, also after redeliveries: every counter
update commits together with the event's inbox row (see ``core``), so each event counts
exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from psycopg.sql import SQL, Identifier

from tododb import contract
from tododb.consumers.analytics.store import DDL, SCHEMA
from tododb.consumers.core import AsyncConn
from tododb.contract import TodoEvent
from tododb.infra.tracing import consumer_span

_COUNTED = {
    contract.TASK_CREATED: "created",
    contract.TASK_COMPLETED: "completed",
    contract.TASK_REOPENED: "reopened",
    contract.TASK_DELETED: "deleted",
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
        """In a span of the event's own trace (the command's that stored it)."""
        with consumer_span("analytics.handle", event):
            await self._handle(conn, event)

    async def _handle(self, conn: AsyncConn, event: TodoEvent) -> None:
        day = event.time.astimezone(UTC).date()
        await conn.execute(
            "INSERT INTO analytics.actor_daily (actor, day, type, events) "
            "VALUES (%s, %s, %s, 1) ON CONFLICT (actor, day, type) "
            "DO UPDATE SET events = analytics.actor_daily.events + 1",
            (event.actor, day, event.type),
        )
        column = _COUNTED.get(event.type)
        if column is None:
            return
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
