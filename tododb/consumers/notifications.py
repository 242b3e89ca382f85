"""Notifications: events become messages for the todo's owner, stored and queued for
delivery to the owner's webhooks.

The notification row, its delivery rows and the inbox row commit in one transaction, so
a redelivered event neither repeats a notification nor a webhook call; the deliveries
themselves are an outbox worked off by ``webhooks.DeliveryWorker``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tododb.consumers.core import AsyncConn
from tododb.consumers.ddl import inbox_ddl
from tododb.relay.envelope import TodoEvent

SCHEMA = "notifications"

DDL = (
    "CREATE SCHEMA IF NOT EXISTS notifications",
    inbox_ddl(SCHEMA),
    "CREATE TABLE IF NOT EXISTS notifications.notifications ("
    "id bigserial PRIMARY KEY, owner text NOT NULL, event_id uuid NOT NULL UNIQUE, "
    "todo_id uuid NOT NULL, type text NOT NULL, message text NOT NULL, data jsonb NOT NULL, "
    "occurred_at timestamptz NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    "CREATE INDEX IF NOT EXISTS notifications_owner_id "
    "ON notifications.notifications (owner, id DESC)",
    # Titles, so that later notifications can name the todo without asking anyone.
    "CREATE TABLE IF NOT EXISTS notifications.todo_titles ("
    "todo_id uuid PRIMARY KEY, title text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS notifications.webhooks ("
    "id uuid PRIMARY KEY, owner text NOT NULL, url text NOT NULL, secret text NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz, "
    "consecutive_failures integer NOT NULL DEFAULT 0, circuit_open_until timestamptz)",
    "CREATE INDEX IF NOT EXISTS webhooks_owner ON notifications.webhooks (owner) "
    "WHERE deleted_at IS NULL",
    "CREATE TABLE IF NOT EXISTS notifications.deliveries ("
    "id bigserial PRIMARY KEY, "
    "webhook_id uuid NOT NULL REFERENCES notifications.webhooks (id), "
    "notification_id bigint NOT NULL REFERENCES notifications.notifications (id), "
    "status text NOT NULL DEFAULT 'pending', attempts integer NOT NULL DEFAULT 0, "
    "next_attempt_at timestamptz NOT NULL DEFAULT now(), last_error text, "
    "delivered_at timestamptz, UNIQUE (webhook_id, notification_id))",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON notifications.deliveries (next_attempt_at) "
    "WHERE status = 'pending'",
    "CREATE TABLE IF NOT EXISTS notifications.delivery_attempts ("
    "id bigserial PRIMARY KEY, "
    "delivery_id bigint NOT NULL REFERENCES notifications.deliveries (id), "
    "webhook_id uuid NOT NULL, attempt integer NOT NULL, "
    "attempted_at timestamptz NOT NULL DEFAULT now(), status_code integer, error text, "
    "duration_ms double precision NOT NULL, outcome text NOT NULL)",
)


def _message(event: TodoEvent, title: str | None) -> str | None:
    """The text for an event, or None for events that notify nobody."""
    name = f'"{title}"' if title else "a todo"
    data = event.data
    match event.type.removeprefix("todos.task."):
        case "created":
            return f"New todo {name}" + (f", due {data['due']}" if data.get("due") else "")
        case "due_date_set":
            return f"Due date of {name} set to {data['due']}"
        case "due_date_cleared":
            return f"Due date of {name} cleared"
        case "completed":
            return f"Completed {name}"
        case "reopened":
            return f"Reopened {name}"
        case "deleted":
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
        if event.type in ("todos.task.created", "todos.task.title_changed"):
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
