"""Notifications: events become messages for the todo's owner, stored and queued for
delivery to the owner's webhooks.

The notification row, its delivery rows and the inbox row commit in one transaction, so
a redelivered event neither repeats a notification nor a webhook call; the deliveries
themselves are an outbox worked off by ``delivery.DeliveryWorker``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tododb import contract
from tododb.consumers.core import AsyncConn
from tododb.consumers.notifications.store import DDL, SCHEMA
from tododb.contract import TodoEvent


def _message(event: TodoEvent, title: str | None) -> str | None:
    """The text for an event, or None for events that notify nobody."""
    name = f'"{title}"' if title else "a todo"
    data = event.data
    match event.type:
        case contract.TASK_CREATED:
            return f"New todo {name}" + (f", due {data['due']}" if data.get("due") else "")
        case contract.TASK_DUE_DATE_SET:
            return f"Due date of {name} set to {data['due']}"
        case contract.TASK_DUE_DATE_CLEARED:
            return f"Due date of {name} cleared"
        case contract.TASK_COMPLETED:
            return f"Completed {name}"
        case contract.TASK_REOPENED:
            return f"Reopened {name}"
        case contract.TASK_DELETED:
            return f"Deleted {name}"
        case _:
            return None


class NotificationsHandler:
    name = SCHEMA

    def ddl(self) -> Sequence[str]:
        return DDL

    async def handle(self, conn: AsyncConn, event: TodoEvent) -> None:
        title = await self._title(conn, event)
        message = _message(event, title)
        if message is None:
            return
        cur = await conn.execute(
            "INSERT INTO notifications.notifications "
            "(owner, event_id, todo_id, type, message, data, occurred_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                event.owner,
                event.id,
                event.todo_id,
                event.type,
                message,
                json.dumps(event.data),
                event.time,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        await conn.execute(
            "INSERT INTO notifications.deliveries (webhook_id, notification_id) "
            "SELECT id, %s FROM notifications.webhooks WHERE owner = %s AND deleted_at IS NULL",
            (row[0], event.owner),
        )

    async def _title(self, conn: AsyncConn, event: TodoEvent) -> str | None:
        title: Any = event.data.get("title")
        if event.type in (contract.TASK_CREATED, contract.TASK_TITLE_CHANGED):
            if not isinstance(title, str):
                raise ValueError(f"{event.type} without a title")
            await conn.execute(
                "INSERT INTO notifications.todo_titles (todo_id, title) VALUES (%s, %s) "
                "ON CONFLICT (todo_id) DO UPDATE SET title = EXCLUDED.title",
                (event.todo_id, title),
            )
            return title
        cur = await conn.execute(
            "SELECT title FROM notifications.todo_titles WHERE todo_id = %s", (event.todo_id,)
        )
        row = await cur.fetchone()
        return None if row is None else str(row[0])
