"""Reminders: a process manager inside the notifications service.

The schedule (``notifications.reminders``, one row per todo that ever had a reminder) is
this service's own state, built from the task events it consumes, in the consumer's
transaction (with its inbox row): ``reminder_set`` arms it, ``reminder_cleared``, a
``completed`` for good (``next_due`` null) and ``deleted`` disarm it, ``reopened``
re-arms a reminder still ahead of it that never fired. Who is reminded is known at
firing time: the todo's assignee (``notifications.todo_assignees``, from ``created``,
``assigned`` and ``unassigned``), else every member of its list (``todo_lists`` and
``list_members``, kept by the handler), else its owner (a list not known here).

``ReminderScheduler`` fires due rows: in one transaction it claims a batch (``FOR UPDATE
SKIP LOCKED``: several services share the table), inserts a notification per recipient
and their webhook deliveries (the outbox ``delivery.DeliveryWorker`` works off) and
disarms the rows. A notification's ``event_id`` is a function of (todo, ``remind_at``)
(``reminder_id``), and ``notifications`` is unique on (``event_id``, ``owner``): a unique
key on (todo, ``remind_at``, recipient), so a reminder is made once per todo, time and
recipient whatever runs or crashes. Between rounds it sleeps until the next due time
(at most ``reminder_max_sleep_seconds``: other services' consumers schedule rows too),
and is woken when this process's consumer schedules something sooner.

Time comes from a clock (a callable), so tests move it instead of waiting. A reminder
fired more than ``reminder_late_after_seconds`` after it was due (the service was down,
or the consumer far behind) says so: ``data.late`` and ``data.late_seconds``, measured
from ``remind_at``, or from when it was set if that was later (a time already past when
set is not late).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from tododb import contract
from tododb.consumers.core import INFRASTRUCTURE_ERRORS, OUTAGE_BACKOFF, AsyncConn
from tododb.contract import TodoEvent
from tododb.infra.retry import Backoff, sleep_or_stop
from tododb.infra.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""The time now (aware)."""

REMINDER_TYPE = "reminder"
"""``notifications.type`` (and the webhook payload's ``type``) of a reminder."""

ERROR_BACKOFF = Backoff(1.0, 60.0)
"""After a firing round that failed for another reason than an outage."""

_NAMESPACE = UUID("5b0f3c52-6a8e-4f5e-9a43-3f1c0f7c2a11")


def reminder_id(todo_id: UUID | str, remind_at: datetime) -> UUID:
    """The ``event_id`` of the notifications of one reminder (todo, time): stable, so
    (``event_id``, ``owner``) is unique per todo, ``remind_at`` and recipient."""
    instant = remind_at.astimezone(UTC).isoformat()
    return uuid.uuid5(_NAMESPACE, f"{UUID(str(todo_id))}/{instant}")


def _instant(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{contract.TASK_REMINDER_SET} without a remind_at")
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError(f"remind_at {value!r} has no time zone")
    return at


# ---- the process manager's side: the handler's transaction ------------------------------


async def track(conn: AsyncConn, event: TodoEvent) -> datetime | None:
    """Keep the schedule and the assignee as this task event says, in the consumer's
    transaction; the time armed, if the event armed a reminder (to wake the scheduler)."""
    data = event.data
    match event.type:
        case contract.TASK_CREATED:
            assignee = data.get("assignee")
            if isinstance(assignee, str) and assignee:
                await _set_assignee(conn, event.todo_id, assignee)
        case contract.TASK_ASSIGNED:
            await _set_assignee(conn, event.todo_id, str(data["assignee"]))
        case contract.TASK_UNASSIGNED:
            await conn.execute(
                "DELETE FROM notifications.todo_assignees WHERE todo_id = %s", (event.todo_id,)
            )
        case contract.TASK_REMINDER_SET:
            at = _instant(data.get("remind_at"))
            cur = await conn.execute(
                "INSERT INTO notifications.reminders "
                "(todo_id, owner, actor, remind_at, set_at, pending) "
                "VALUES (%s, %s, %s, %s, %s, true) ON CONFLICT (todo_id) DO UPDATE SET "
                "owner = EXCLUDED.owner, actor = EXCLUDED.actor, "
                "remind_at = EXCLUDED.remind_at, set_at = EXCLUDED.set_at, "
                "pending = NOT (reminders.done OR reminders.deleted) RETURNING pending",
                (event.todo_id, event.owner, event.actor, at, event.time),
            )
            row = await cur.fetchone()
            return at if row is not None and row[0] else None
        case contract.TASK_REMINDER_CLEARED:
            await conn.execute(
                "UPDATE notifications.reminders SET remind_at = NULL, pending = false "
                "WHERE todo_id = %s",
                (event.todo_id,),
            )
        case contract.TASK_COMPLETED if data.get("next_due") is None:
            await conn.execute(
                "UPDATE notifications.reminders SET done = true, pending = false "
                "WHERE todo_id = %s",
                (event.todo_id,),
            )
        case contract.TASK_REOPENED:
            # Re-armed only if still ahead and never fired: one due while the todo was
            # done is not news when it is reopened.
            cur = await conn.execute(
                "UPDATE notifications.reminders SET done = false, "
                "pending = (NOT deleted AND remind_at IS NOT NULL AND remind_at > %s "
                "AND fired_remind_at IS DISTINCT FROM remind_at) "
                "WHERE todo_id = %s RETURNING pending, remind_at",
                (event.time, event.todo_id),
            )
            row = await cur.fetchone()
            return row[1] if row is not None and row[0] else None
        case contract.TASK_DELETED:
            await conn.execute(
                "UPDATE notifications.reminders SET deleted = true, pending = false "
                "WHERE todo_id = %s",
                (event.todo_id,),
            )
        case _:
            pass
    return None


async def _set_assignee(conn: AsyncConn, todo_id: str, assignee: str) -> None:
    await conn.execute(
        "INSERT INTO notifications.todo_assignees (todo_id, assignee) VALUES (%s, %s) "
        "ON CONFLICT (todo_id) DO UPDATE SET assignee = EXCLUDED.assignee",
        (todo_id, assignee),
    )


# ---- the scheduler: firing due reminders ------------------------------------------------

_CLAIM = (
    "WITH due AS ("
    "  SELECT todo_id FROM notifications.reminders "
    "  WHERE pending AND remind_at <= %(now)s::timestamptz "
    "  ORDER BY remind_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
    "UPDATE notifications.reminders r SET pending = false, fired_remind_at = r.remind_at, "
    "fired_at = %(now)s::timestamptz, "
    "late_seconds = extract(epoch FROM %(now)s::timestamptz - greatest(r.remind_at, r.set_at)) "
    "FROM due WHERE r.todo_id = due.todo_id "
    "RETURNING r.todo_id, r.owner, r.actor, r.remind_at, r.late_seconds"
)

_RECIPIENTS = (
    # The assignee; else the members of the todo's list, if this service knows it;
    # else the owner.
    "SELECT assignee FROM notifications.todo_assignees WHERE todo_id = %(todo)s "
    "UNION ALL "
    "SELECT m.user_id FROM notifications.todo_lists t "
    "JOIN notifications.list_members m ON m.list_id = t.list_id "
    "WHERE t.todo_id = %(todo)s AND NOT EXISTS "
    "  (SELECT 1 FROM notifications.todo_assignees WHERE todo_id = %(todo)s)"
)

_NOTIFY = (
    "WITH n AS ("
    "  INSERT INTO notifications.notifications "
    "  (owner, event_id, todo_id, type, message, data, occurred_at, actor) "
    "  SELECT r, %s, %s, %s, %s, %s, %s, %s FROM unnest(%s::text[]) AS r "
    "  ON CONFLICT (event_id, owner) DO NOTHING RETURNING id, owner), "
    "d AS (INSERT INTO notifications.deliveries (webhook_id, notification_id) "
    "  SELECT w.id, n.id FROM n JOIN notifications.webhooks w "
    "  ON w.owner = n.owner AND w.deleted_at IS NULL) "
    "SELECT count(*) FROM n"
)


@dataclass(frozen=True)
class Due:
    """A claimed reminder."""

    todo_id: UUID
    owner: str
    actor: str | None
    remind_at: datetime
    late_seconds: float


class ReminderScheduler:
    """Fires due reminders; several may run, in one process or many (rows are locked)."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool[Any],
        *,
        clock: Clock | None = None,
        on_fired: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.on_fired = on_fired
        self.batch = settings.reminder_batch_size
        self.max_sleep = settings.reminder_max_sleep_seconds
        self.late_after = settings.reminder_late_after_seconds
        self.fired = 0
        """Reminders fired (todo and time) by this scheduler."""
        self.notified = 0
        """Notifications it made (one per recipient)."""
        self.looked_at: datetime | None = None
        """The clock's time at the last round that fired what was due then (committed)."""
        self._wake = asyncio.Event()
        self._until: datetime | None = None

    def notice(self, at: datetime) -> None:
        """Something is armed for ``at``: wake up if that is before the planned wake-up."""
        if self._until is None or at < self._until:
            self._wake.set()

    def poke(self) -> None:
        """Look again now (tests call it after moving their clock)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            self._until = None
            self._wake.clear()
            try:
                while await self.fire_due() >= self.batch and not stop.is_set():
                    pass  # a full batch: more may be due
                delay = await self._delay()
                failures = 0
            except INFRASTRUCTURE_ERRORS as e:
                failures += 1
                log.warning("reminders: database unavailable: %r", e)
                await sleep_or_stop(stop, OUTAGE_BACKOFF.delay(failures))
                continue
            except Exception:
                # Not an outage: the batch rolled back (nothing fired, nothing lost) and
                # is tried again later; the consumer and delivery go on meanwhile.
                failures += 1
                log.exception("reminders: firing failed")
                await sleep_or_stop(stop, ERROR_BACKOFF.delay(failures))
                continue
            await self._sleep(stop, delay)

    async def _delay(self) -> float:
        """Seconds until the next armed reminder, at most ``max_sleep``."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT min(remind_at) FROM notifications.reminders WHERE pending"
            )
            row = await cur.fetchone()
        now = self.clock()
        nxt = None if row is None else row[0]
        delay = self.max_sleep if nxt is None else (nxt - now).total_seconds()
        delay = max(0.0, min(delay, self.max_sleep))
        self._until = now if delay <= 0 else nxt
        return delay

    async def _sleep(self, stop: asyncio.Event, delay: float) -> None:
        if delay <= 0:
            return
        waiter = asyncio.create_task(self._wake.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()

    async def fire_due(self) -> int:
        """Claim up to a batch of due reminders, make their notifications and deliveries
        and disarm them, in one transaction; how many were claimed."""
        now = self.clock()
        made = 0
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(Due))
            await cur.execute(_CLAIM, {"now": now, "limit": self.batch})
            claimed: list[Due] = await cur.fetchall()
            for due in claimed:
                made += await self._notify(conn, due)
        self.looked_at = now
        if claimed:
            self.fired += len(claimed)
            self.notified += made
            log.info("reminders: fired %d (%d notifications)", len(claimed), made)
            if made and self.on_fired is not None:
                self.on_fired()
        return len(claimed)

    async def _notify(self, conn: AsyncConn, due: Due) -> int:
        cur = await conn.execute(_RECIPIENTS, {"todo": due.todo_id})
        recipients = {str(r[0]) for r in await cur.fetchall()} or {due.owner}
        cur = await conn.execute(
            "SELECT title FROM notifications.todo_titles WHERE todo_id = %s", (due.todo_id,)
        )
        row = await cur.fetchone()
        name = f'"{row[0]}"' if row is not None else "a todo"
        late_seconds = max(0.0, float(due.late_seconds))
        data = {
            "remind_at": due.remind_at.astimezone(UTC).isoformat(),
            "late": late_seconds > self.late_after,
            "late_seconds": round(late_seconds, 3),
            "set_by": due.actor,
        }
        cur = await conn.execute(
            _NOTIFY,
            (
                reminder_id(due.todo_id, due.remind_at),
                due.todo_id,
                REMINDER_TYPE,
                f"Reminder: {name}",
                json.dumps(data),
                due.remind_at,
                None,  # nobody acted: the time came (who set it is ``data.set_by``)
                sorted(recipients),
            ),
        )
        counted = await cur.fetchone()
        return 0 if counted is None else int(counted[0])
