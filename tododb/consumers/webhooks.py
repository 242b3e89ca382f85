"""Webhook delivery: signed POSTs, retries with backoff, a circuit breaker per endpoint.

Receivers verify ``X-Tododb-Signature: sha256=<hex>``, the HMAC-SHA256 with their secret
of ``"<X-Tododb-Timestamp>." + body``; the timestamp is inside the MAC so an old
delivery cannot be replayed with a fresh timestamp. Every attempt is a row in
``notifications.delivery_attempts``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from tododb.aio import wait_or_stop
from tododb.consumers.core import INFRASTRUCTURE_ERRORS
from tododb.egress import refusal
from tododb.messaging import backoff_delay
from tododb.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Tododb-Signature"
TIMESTAMP_HEADER = "X-Tododb-Timestamp"
CLAIM_LIMIT = 50


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (also used by the tests)."""
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


@dataclass
class _Circuit:
    failures: int
    open_until: datetime | None


class DeliveryWorker:
    """Works off ``notifications.deliveries``; several workers may run (rows are leased)."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool[Any]) -> None:
        self.settings = settings
        self.pool = pool
        self.wake = asyncio.Event()
        self.delivered = 0
        self.attempted = 0

    async def run(self, stop: asyncio.Event) -> None:
        timeout = httpx.Timeout(self.settings.webhook_timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
            failures = 0
            while not stop.is_set():
                try:
                    done = await self.deliver_due(http)
                    failures = 0
                except INFRASTRUCTURE_ERRORS as e:
                    failures += 1
                    log.warning("webhooks: database unavailable: %r", e)
                    await wait_or_stop(stop, backoff_delay(failures, 0.5, 10.0))
                    continue
                if done == 0:
                    self.wake.clear()
                    waiter = asyncio.create_task(self.wake.wait())
                    stopper = asyncio.create_task(stop.wait())
                    await asyncio.wait(
                        {waiter, stopper}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED
                    )
                    waiter.cancel()
                    stopper.cancel()

    async def deliver_due(self, http: httpx.AsyncClient) -> int:
        """Claim due deliveries (a lease: pushed into the future), send them; how many."""
        lease = timedelta(seconds=self.settings.webhook_timeout_seconds * 2 + 5)
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
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
                "n.event_id, n.todo_id, n.type, n.message, n.data, n.occurred_at",
                (CLAIM_LIMIT, lease),
            )
            claimed = await cur.fetchall()
        circuits: dict[UUID, _Circuit] = {}
        for row in sorted(claimed, key=lambda r: r["notification_id"]):
            webhook: UUID = row["webhook_id"]
            circuit = circuits.setdefault(
                webhook, _Circuit(row["consecutive_failures"], row["circuit_open_until"])
            )
            await self._deliver(http, row, circuit)
        return len(claimed)

    async def _deliver(
        self, http: httpx.AsyncClient, row: dict[str, Any], circuit: _Circuit
    ) -> None:
        now = datetime.now(UTC)
        if row["deleted_at"] is not None:
            await self._finish(row["id"], "cancelled", None, None)
            return
        if circuit.open_until is not None and circuit.open_until > now:
            # Opened during this round: wait for the cool-down, costs no attempt.
            await self._postpone(row["id"], circuit.open_until)
            return
        body = json.dumps(
            {
                "id": row["notification_id"],
                "event_id": str(row["event_id"]),
                "todo_id": str(row["todo_id"]),
                "type": row["type"],
                "message": row["message"],
                "data": row["data"],
                "occurred_at": row["occurred_at"].isoformat(),
            },
            separators=(",", ":"),
        ).encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: sign(row["secret"], timestamp, body),
            TIMESTAMP_HEADER: str(timestamp),
            "X-Tododb-Delivery": str(row["id"]),
            "X-Tododb-Event-Id": str(row["event_id"]),
            "user-agent": "tododb-webhooks/1",
        }
        attempt = row["attempts"] + 1
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        refused = (
            None
            if self.settings.webhook_allow_private_targets
            else await asyncio.to_thread(refusal, row["url"])  # resolved afresh: DNS changes
        )
        try:
            if refused is not None:
                ok, error = False, f"refused: {refused}"
            else:
                response = await http.post(row["url"], content=body, headers=headers)
                status_code = response.status_code
                ok = 200 <= status_code < 300
                if not ok:
                    error = f"HTTP {status_code}"
        except httpx.HTTPError as e:
            ok = False
            error = f"{type(e).__name__}: {e}"[:500]
        duration_ms = (time.perf_counter() - started) * 1000
        self.attempted += 1
        if ok:
            self.delivered += 1
            circuit.failures, circuit.open_until = 0, None
        else:
            circuit.failures += 1
            if circuit.failures >= self.settings.webhook_circuit_threshold:
                cooldown = timedelta(seconds=self.settings.webhook_circuit_cooldown_seconds)
                circuit.open_until = datetime.now(UTC) + cooldown
                log.warning(
                    "webhook %s: circuit open until %s", row["webhook_id"], circuit.open_until
                )
        gave_up = not ok and attempt >= self.settings.webhook_max_attempts
        retry_at = datetime.now(UTC) + timedelta(
            seconds=backoff_delay(attempt, self.settings.webhook_backoff_seconds, 3600.0)
        )
        if circuit.open_until is not None and circuit.open_until > retry_at:
            retry_at = circuit.open_until
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO notifications.delivery_attempts "
                "(delivery_id, webhook_id, attempt, status_code, error, duration_ms, outcome) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    row["id"],
                    row["webhook_id"],
                    attempt,
                    status_code,
                    error,
                    duration_ms,
                    "delivered" if ok else ("failed" if gave_up else "retry"),
                ),
            )
            await conn.execute(
                "UPDATE notifications.deliveries SET attempts = %s, last_error = %s, "
                "status = %s, next_attempt_at = %s, delivered_at = %s WHERE id = %s",
                (
                    attempt,
                    error,
                    "delivered" if ok else ("failed" if gave_up else "pending"),
                    retry_at,
                    datetime.now(UTC) if ok else None,
                    row["id"],
                ),
            )
            await conn.execute(
                "UPDATE notifications.webhooks SET consecutive_failures = %s, "
                "circuit_open_until = %s WHERE id = %s",
                (circuit.failures, circuit.open_until, row["webhook_id"]),
            )

    async def _finish(self, delivery_id: int, status: str, error: str | None, at: Any) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE notifications.deliveries SET status = %s, last_error = %s, "
                "delivered_at = %s WHERE id = %s",
                (status, error, at, delivery_id),
            )

    async def _postpone(self, delivery_id: int, until: datetime) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE notifications.deliveries SET next_attempt_at = %s WHERE id = %s",
                (until, delivery_id),
            )
