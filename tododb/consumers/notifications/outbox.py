"""The delivery outbox: every statement the delivery worker makes, and nothing else.

``notifications.deliveries`` rows are leased (their ``next_attempt_at`` pushed into the
future) when claimed, so several workers can share the table; each attempt is recorded
together with the delivery's new state and the endpoint's circuit, in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from tododb.consumers.notifications.schedule import Outcome, Status

CLAIM_LIMIT = 50

_CLAIM = (
    "WITH due AS ("
    "  SELECT d.id FROM notifications.deliveries d "
    "  JOIN notifications.webhooks w ON w.id = d.webhook_id "
    "  WHERE d.status = 'pending' AND d.next_attempt_at <= now() "
    "  AND (w.circuit_open_until IS NULL OR w.circuit_open_until <= now()) "
    "  ORDER BY d.next_attempt_at LIMIT %s FOR UPDATE OF d SKIP LOCKED) "
    "UPDATE notifications.deliveries d SET next_attempt_at = now() + %s "
    "FROM due, notifications.webhooks w, notifications.notifications n "
    "WHERE d.id = due.id AND w.id = d.webhook_id AND n.id = d.notification_id "
    "RETURNING d.id, d.attempts, d.webhook_id, w.url, w.secret, w.deleted_at, "
    "w.consecutive_failures, w.circuit_open_until, n.id AS notification_id, "
    "n.event_id, n.todo_id, n.type, n.message, n.data, n.occurred_at, n.actor, "
    "n.correlation_id, n.traceparent, n.tracestate"
)


@dataclass(frozen=True)
class Claim:
    """A leased delivery, with its webhook's target and circuit and the notification."""

    id: int
    attempts: int
    webhook_id: UUID
    url: str
    secret: str
    deleted_at: datetime | None
    consecutive_failures: int
    circuit_open_until: datetime | None
    notification_id: int
    event_id: UUID
    todo_id: UUID
    type: str
    message: str
    data: Any
    occurred_at: datetime
    actor: str | None = None
    """Who caused it (None on notifications made before actors were recorded)."""
    correlation_id: str | None = None
    traceparent: str | None = None
    """The causing command's trace: the webhook call continues it (None: none known)."""
    tracestate: str | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt's row, the delivery's state after it, and the endpoint's circuit."""

    delivery_id: int
    webhook_id: UUID
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: float
    outcome: Outcome
    status: Status
    next_attempt_at: datetime
    delivered_at: datetime | None
    consecutive_failures: int
    circuit_open_until: datetime | None


class DeliveryOutbox:
    """``notifications.deliveries``, ``delivery_attempts`` and the webhooks' circuits."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def claim_due(self, lease: timedelta, limit: int = CLAIM_LIMIT) -> list[Claim]:
        """Due deliveries of endpoints whose circuit lets them through, leased for ``lease``."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(Claim))
            await cur.execute(_CLAIM, (limit, lease))
            claimed: list[Claim] = await cur.fetchall()
        return claimed

    async def record(self, r: AttemptRecord) -> None:
        """The attempt, the delivery and the circuit change together or not at all."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO notifications.delivery_attempts "
                "(delivery_id, webhook_id, attempt, status_code, error, duration_ms, outcome) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    r.delivery_id,
                    r.webhook_id,
                    r.attempt,
                    r.status_code,
                    r.error,
                    r.duration_ms,
                    r.outcome,
                ),
            )
            await conn.execute(
                "UPDATE notifications.deliveries SET attempts = %s, last_error = %s, "
                "status = %s, next_attempt_at = %s, delivered_at = %s WHERE id = %s",
                (r.attempt, r.error, r.status, r.next_attempt_at, r.delivered_at, r.delivery_id),
            )
            await conn.execute(
                "UPDATE notifications.webhooks SET consecutive_failures = %s, "
                "circuit_open_until = %s WHERE id = %s",
                (r.consecutive_failures, r.circuit_open_until, r.webhook_id),
            )

    async def finish(
        self,
        delivery_id: int,
        status: str,
        error: str | None = None,
        at: datetime | None = None,
    ) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE notifications.deliveries SET status = %s, last_error = %s, "
                "delivered_at = %s WHERE id = %s",
                (status, error, at, delivery_id),
            )

    async def cancel(self, delivery_id: int) -> None:
        """Its webhook was deleted: no attempt, and the delivery stops being due."""
        await self.finish(delivery_id, "cancelled")

    async def postpone(self, delivery_id: int, until: datetime) -> None:
        """Due again at ``until``, without costing an attempt."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE notifications.deliveries SET next_attempt_at = %s WHERE id = %s",
                (until, delivery_id),
            )
