"""The notifications service's tables: their DDL, and the queries the API may make.

The schema belongs to the notifications service. The API registers webhooks and reads
the feed only through ``NotificationsStore``, handed to it by the composition root; the
consumer and the delivery worker keep their own statements beside their code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from psycopg.sql import SQL

from tododb.consumers.ddl import apply_ddl, inbox_ddl
from tododb.consumers.notifications.circuit import circuit_state
from tododb.infra.postgres import ConnectionFactory

SCHEMA = "notifications"

DDL = (
    "CREATE SCHEMA IF NOT EXISTS notifications",
    inbox_ddl(SCHEMA),
    # One row per event and recipient (``owner``: the user notified, a member of the
    # todo's list other than the actor). Before lists, one per event (its owner): the
    # unique constraint on event_id alone is dropped where an older version made it.
    "CREATE TABLE IF NOT EXISTS notifications.notifications ("
    "id bigserial PRIMARY KEY, owner text NOT NULL, event_id uuid NOT NULL, "
    "todo_id uuid NOT NULL, type text NOT NULL, message text NOT NULL, data jsonb NOT NULL, "
    "occurred_at timestamptz NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    # Only when there is something to change: ALTER TABLE takes an ACCESS EXCLUSIVE lock
    # even when IF [NOT] EXISTS makes it a no-op, and a consumer handling events while
    # another process (`todo consumer retry`, a second replica) applies this DDL would
    # deadlock with it.
    "DO $$ BEGIN "
    "IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'notifications_event_id_key' "
    "AND conrelid = 'notifications.notifications'::regclass) THEN "
    "ALTER TABLE notifications.notifications DROP CONSTRAINT notifications_event_id_key; "
    "END IF; "
    "IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attname = 'actor' AND NOT attisdropped "
    "AND attrelid = 'notifications.notifications'::regclass) THEN "
    "ALTER TABLE notifications.notifications ADD COLUMN actor text; "
    "END IF; "
    # The causing command's correlation id and trace context (issue #13): the webhook
    # call continues the trace.
    "IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attname = 'traceparent' "
    "AND NOT attisdropped AND attrelid = 'notifications.notifications'::regclass) THEN "
    "ALTER TABLE notifications.notifications ADD COLUMN correlation_id text, "
    "ADD COLUMN traceparent text, ADD COLUMN tracestate text; "
    "END IF; END $$",
    "CREATE UNIQUE INDEX IF NOT EXISTS notifications_event_recipient "
    "ON notifications.notifications (event_id, owner)",
    "CREATE INDEX IF NOT EXISTS notifications_owner_id "
    "ON notifications.notifications (owner, id DESC)",
    # Titles, so that later notifications can name the todo without asking anyone.
    "CREATE TABLE IF NOT EXISTS notifications.todo_titles ("
    "todo_id uuid PRIMARY KEY, title text NOT NULL)",
    # Who is notified: each todo's list (from created and moved; a todo whose created
    # event came before lists, or before this table, has none: its owner's Inbox), and
    # each list's members (from todos.list.*). A deleted list keeps its members, so the
    # deletions of its todos (their events come on other keys, maybe later) reach them.
    "CREATE TABLE IF NOT EXISTS notifications.todo_lists ("
    "todo_id uuid PRIMARY KEY, list_id uuid NOT NULL)",
    "CREATE TABLE IF NOT EXISTS notifications.lists ("
    "list_id uuid PRIMARY KEY, owner text NOT NULL, name text NOT NULL, "
    "inbox boolean NOT NULL, deleted boolean NOT NULL DEFAULT false, "
    "version integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS notifications.list_members ("
    "list_id uuid NOT NULL REFERENCES notifications.lists (list_id), user_id text NOT NULL, "
    "role text NOT NULL, PRIMARY KEY (list_id, user_id))",
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
    # Reminders (see ``reminders``): one row per todo that had one. ``pending``: armed,
    # to fire at ``remind_at``; ``done``/``deleted``: completed for good / deleted (a
    # reminder set then waits);
    # ``set_at``: when the current ``remind_at`` was set (lateness counts from the later
    # of the two); ``fired_remind_at``: the last time fired, so a reopen does not repeat it.
    "CREATE TABLE IF NOT EXISTS notifications.reminders ("
    "todo_id uuid PRIMARY KEY, owner text NOT NULL, actor text, "
    "remind_at timestamptz, set_at timestamptz, pending boolean NOT NULL DEFAULT false, "
    "done boolean NOT NULL DEFAULT false, deleted boolean NOT NULL DEFAULT false, "
    "fired_remind_at timestamptz, fired_at timestamptz, late_seconds double precision)",
    "CREATE INDEX IF NOT EXISTS reminders_due ON notifications.reminders (remind_at) WHERE pending",
    # Each todo's assignee (from created, assigned, unassigned): who is reminded.
    "CREATE TABLE IF NOT EXISTS notifications.todo_assignees ("
    "todo_id uuid PRIMARY KEY, assignee text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS notifications.delivery_attempts ("
    "id bigserial PRIMARY KEY, "
    "delivery_id bigint NOT NULL REFERENCES notifications.deliveries (id), "
    "webhook_id uuid NOT NULL, attempt integer NOT NULL, "
    "attempted_at timestamptz NOT NULL DEFAULT now(), status_code integer, error text, "
    "duration_ms double precision NOT NULL, outcome text NOT NULL)",
)

_WEBHOOK_COLUMNS = SQL("id, url, created_at, consecutive_failures, circuit_open_until")


def _with_circuit_state(row: dict[str, Any]) -> dict[str, Any]:
    """The row plus ``circuit_state``: closed, open or half-open, as delivery sees it."""
    return {**row, "circuit_state": circuit_state(row["circuit_open_until"], datetime.now(UTC))}


class TooManyWebhooks(Exception):
    """The owner already has the most webhooks allowed."""


class NotificationsStore:
    """Webhook registrations and the notification feed, per owner."""

    def __init__(self, connect: ConnectionFactory) -> None:
        self.connect = connect

    def create_schema(self) -> None:
        with self.connect() as conn:
            apply_ddl(conn, SCHEMA, DDL)

    def add_webhook(self, owner: str, url: str, secret: str, *, limit: int) -> dict[str, Any]:
        """Register a webhook; ``TooManyWebhooks`` if the owner has ``limit`` already."""
        with self.connect() as conn, conn.transaction():
            # Serialise one owner's registrations so the limit holds under concurrency.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"webhooks:{owner}",))
            row = conn.execute(
                "SELECT count(*) AS n FROM notifications.webhooks "
                "WHERE owner = %s AND deleted_at IS NULL",
                (owner,),
            ).fetchone()
            if row is not None and row["n"] >= limit:
                raise TooManyWebhooks(f"at most {limit} webhooks per user")
            created = conn.execute(
                SQL(
                    "INSERT INTO notifications.webhooks (id, owner, url, secret) "
                    "VALUES (%s, %s, %s, %s) RETURNING {}"
                ).format(_WEBHOOK_COLUMNS),
                (uuid4(), owner, url, secret),
            ).fetchone()
        assert created is not None
        return _with_circuit_state(created)

    def webhooks(self, owner: str) -> list[dict[str, Any]]:
        with self.connect() as conn:
            rows = conn.execute(
                SQL(
                    "SELECT {} FROM notifications.webhooks "
                    "WHERE owner = %s AND deleted_at IS NULL ORDER BY created_at, id"
                ).format(_WEBHOOK_COLUMNS),
                (owner,),
            ).fetchall()
        return [_with_circuit_state(r) for r in rows]

    def delete_webhook(self, owner: str, webhook_id: UUID) -> bool:
        """Stop its deliveries (the attempts stay on record); False if there is none."""
        with self.connect() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE notifications.webhooks SET deleted_at = now() "
                "WHERE id = %s AND owner = %s AND deleted_at IS NULL RETURNING id",
                (webhook_id, owner),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "UPDATE notifications.deliveries SET status = 'cancelled' "
                "WHERE webhook_id = %s AND status = 'pending'",
                (webhook_id,),
            )
        return True

    def notifications(self, owner: str, *, before: int | None, limit: int) -> list[dict[str, Any]]:
        """The user's notifications with ids below ``before``, newest first (``actor``:
        who caused it, None on notifications made before actors were recorded)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT id, event_id, todo_id, type, message, data, occurred_at, actor, "
                "correlation_id "
                "FROM notifications.notifications WHERE owner = %s "
                "AND (%s::bigint IS NULL OR id < %s::bigint) ORDER BY id DESC LIMIT %s",
                (owner, before, before, limit),
            ).fetchall()
        return [dict(r) for r in rows]
