"""Notifications: task events become messages for the members of the todo's list other
than the one who acted, stored and queued for delivery to those members' webhooks.

Who is notified comes from the consumer's own tables (``store``): each list's members,
kept from the ``todos.list.*`` events, and each todo's list, from ``created`` and
``moved``. A todo whose list is unknown (created before lists, or its list's events not
seen yet: a list's events are on another key, so in no order with its todos') notifies
its owner, as before lists. The actor is never notified of their own action.

Reminders are scheduled here too (``reminders.track``: the schedule is this service's
own state) and fired by ``reminders.ReminderScheduler``.

The notification rows, their delivery rows, the membership changes and the inbox row
commit in one transaction, so a redelivered event neither repeats a notification nor a
webhook call; the deliveries themselves are an outbox worked off by
``delivery.DeliveryWorker``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tododb import contract
from tododb.consumers.core import AsyncConn
from tododb.consumers.notifications import reminders
from tododb.consumers.notifications.store import DDL, SCHEMA
from tododb.contract import TodoEvent
from tododb.infra.tracing import consumer_span


def _message(event: TodoEvent, title: str | None, *, moved_lists: bool) -> str | None:
    """The text for a task event, or None for events that notify nobody."""
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
            if data.get("next_due"):
                return f"Completed {name}; next due {data['next_due']}"
            return f"Completed {name}"
        case contract.TASK_REOPENED:
            return f"Reopened {name}"
        case contract.TASK_DELETED:
            return f"Deleted {name}"
        case contract.TASK_ASSIGNED:
            return f"Assigned {name} to {data['assignee']}"
        case contract.TASK_UNASSIGNED:
            return f"Unassigned {name}"
        case contract.TASK_MOVED if moved_lists:  # a reorder within the list is no news
            return f"Moved {name} to another list"
        case _:
            return None


class NotificationsHandler:
    name = SCHEMA

    def __init__(self) -> None:
        self.armed: datetime | None = None
        """The soonest reminder armed since ``take_armed`` (its transaction may yet roll
        back: then waking the scheduler for it costs one look at the schedule)."""

    def ddl(self) -> Sequence[str]:
        return DDL

    def take_armed(self) -> datetime | None:
        armed, self.armed = self.armed, None
        return armed

    async def handle(self, conn: AsyncConn, event: TodoEvent) -> None:
        """In a span of the event's own trace (the command's that stored it)."""
        with consumer_span("notifications.handle", event):
            await self._handle(conn, event)

    async def _handle(self, conn: AsyncConn, event: TodoEvent) -> None:
        if event.is_list_event:
            await self._list_event(conn, event)
            return
        if not event.is_task_event:
            return  # a type of a later contract version: not ours to understand
        armed = await reminders.track(conn, event)
        if armed is not None and (self.armed is None or armed < self.armed):
            self.armed = armed
        title = await self._title(conn, event)
        lists, moved_lists = await self._lists(conn, event)
        message = _message(event, title, moved_lists=moved_lists)
        if message is None:
            return
        recipients = await self._members(conn, event, lists)
        recipients.discard(event.actor)
        if not recipients:
            return
        await conn.execute(
            "WITH n AS ("
            "  INSERT INTO notifications.notifications "
            "  (owner, event_id, todo_id, type, message, data, occurred_at, actor, "
            "   correlation_id, traceparent, tracestate) "
            "  SELECT r, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s FROM unnest(%s::text[]) AS r "
            "  RETURNING id, owner) "
            "INSERT INTO notifications.deliveries (webhook_id, notification_id) "
            "SELECT w.id, n.id FROM n JOIN notifications.webhooks w "
            "ON w.owner = n.owner AND w.deleted_at IS NULL",
            (
                event.id,
                event.todo_id,
                event.type,
                message,
                json.dumps(event.data),
                event.time,
                event.actor,
                event.correlation_id,
                event.traceparent,
                event.tracestate,
                sorted(recipients),
            ),
        )

    # ---- who: lists and their members -------------------------------------------------

    async def _lists(self, conn: AsyncConn, event: TodoEvent) -> tuple[list[str], bool]:
        """The todo's list(s) for this event (a move to another list: both, so the old
        list's members learn where it went) and whether it changed lists."""
        if event.type == contract.TASK_CREATED:
            list_id = event.list_id
            if list_id is not None:
                await conn.execute(
                    "INSERT INTO notifications.todo_lists (todo_id, list_id) VALUES (%s, %s) "
                    "ON CONFLICT (todo_id) DO UPDATE SET list_id = EXCLUDED.list_id",
                    (event.todo_id, list_id),
                )
            return ([] if list_id is None else [list_id]), False
        cur = await conn.execute(
            "SELECT list_id FROM notifications.todo_lists WHERE todo_id = %s", (event.todo_id,)
        )
        row = await cur.fetchone()
        current = None if row is None else str(row[0])
        if event.type != contract.TASK_MOVED:
            return ([] if current is None else [current]), False
        target = event.list_id
        if target is None:
            raise ValueError(f"{event.type} without a list_id")
        await conn.execute(
            "INSERT INTO notifications.todo_lists (todo_id, list_id) VALUES (%s, %s) "
            "ON CONFLICT (todo_id) DO UPDATE SET list_id = EXCLUDED.list_id",
            (event.todo_id, target),
        )
        if current is None or current == target:
            return [target], False
        return [current, target], True

    async def _members(self, conn: AsyncConn, event: TodoEvent, lists: list[str]) -> set[str]:
        """The members of the lists this consumer knows, else the todo's owner."""
        members: set[str] = set()
        known = 0
        for list_id in lists:
            cur = await conn.execute(
                "SELECT m.user_id FROM notifications.lists l "
                "LEFT JOIN notifications.list_members m ON m.list_id = l.list_id "
                "WHERE l.list_id = %s",
                (list_id,),
            )
            rows = await cur.fetchall()
            if rows:
                known += 1
                members.update(str(r[0]) for r in rows if r[0] is not None)
        if not known:
            members.add(event.owner)
        return members

    async def _list_event(self, conn: AsyncConn, event: TodoEvent) -> None:
        """Keep the list and its members as the list's events say (one key, in order)."""
        data: dict[str, Any] = event.data
        list_id = event.todo_id
        match event.type:
            case contract.LIST_CREATED:
                await conn.execute(
                    "INSERT INTO notifications.lists (list_id, owner, name, inbox, version) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (list_id) DO NOTHING",
                    (list_id, event.owner, str(data["name"]), bool(data["inbox"]), event.version),
                )
                await conn.execute(
                    "INSERT INTO notifications.list_members (list_id, user_id, role) "
                    "VALUES (%s, %s, 'owner') ON CONFLICT DO NOTHING",
                    (list_id, event.owner),
                )
            case contract.LIST_RENAMED:
                if await self._bump(conn, event):
                    await conn.execute(
                        "UPDATE notifications.lists SET name = %s WHERE list_id = %s",
                        (str(data["name"]), list_id),
                    )
            case contract.LIST_MEMBER_SET:
                if await self._bump(conn, event):
                    await conn.execute(
                        "INSERT INTO notifications.list_members (list_id, user_id, role) "
                        "VALUES (%s, %s, %s) ON CONFLICT (list_id, user_id) "
                        "DO UPDATE SET role = EXCLUDED.role",
                        (list_id, _user(data), str(data["role"])),
                    )
            case contract.LIST_MEMBER_REMOVED:
                if await self._bump(conn, event):
                    await conn.execute(
                        "DELETE FROM notifications.list_members "
                        "WHERE list_id = %s AND user_id = %s",
                        (list_id, _user(data)),
                    )
            case contract.LIST_DELETED:
                if await self._bump(conn, event):
                    await conn.execute(
                        "UPDATE notifications.lists SET deleted = true WHERE list_id = %s",
                        (list_id,),
                    )
            case _:
                pass

    async def _bump(self, conn: AsyncConn, event: TodoEvent) -> bool:
        """Record the list's new version; False if the list is not known here (its
        created event was dead-lettered and skipped): nothing of it to keep."""
        cur = await conn.execute(
            "UPDATE notifications.lists SET version = %s WHERE list_id = %s",
            (event.version, event.todo_id),
        )
        return bool(cur.rowcount)

    # ---- what: the todo's title ---------------------------------------------------------

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


def _user(data: dict[str, Any]) -> str:
    user = data.get("user")
    if not isinstance(user, str) or not user:
        raise ValueError("a member event without a user")
    return user
