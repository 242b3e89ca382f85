"""Webhook delivery: signed POSTs, retries with backoff, a circuit breaker per endpoint.

The decisions are pure and live beside this module (``signing``, ``circuit``,
``schedule``), as do the statements (``outbox``); the worker here only does the I/O
between them: claim, re-check the target, POST, record. Every attempt is a row in
``notifications.delivery_attempts``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from psycopg_pool import AsyncConnectionPool

from tododb.consumers.core import INFRASTRUCTURE_ERRORS
from tododb.consumers.notifications.circuit import CircuitBreaker
from tododb.consumers.notifications.outbox import AttemptRecord, Claim, DeliveryOutbox
from tododb.consumers.notifications.schedule import RetrySchedule
from tododb.consumers.notifications.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    signed_headers,
    verify,
)
from tododb.infra.egress import refusal
from tododb.infra.retry import Backoff, sleep_or_stop
from tododb.infra.settings import Settings
from tododb.infra.tracing import webhook_span

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryWorker",
    "Sent",
    "payload",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)

OUTAGE_BACKOFF = Backoff(0.5, 2.0)
"""Waiting out a database that is down."""


def payload(claim: Claim) -> bytes:
    """The request body: compact JSON, so that the signed bytes are the sent bytes."""
    return json.dumps(
        {
            "id": claim.notification_id,
            "event_id": str(claim.event_id),
            "todo_id": str(claim.todo_id),
            "type": claim.type,
            "message": claim.message,
            "data": claim.data,
            "occurred_at": claim.occurred_at.isoformat(),
            "actor": claim.actor,
            "correlation_id": claim.correlation_id,
        },
        separators=(",", ":"),
    ).encode()


@dataclass(frozen=True)
class Sent:
    """What one POST came to: a status code, or why there was none (``error``)."""

    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class DeliveryWorker:
    """Works off ``notifications.deliveries``; several workers may run (rows are leased)."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool[Any]) -> None:
        self.settings = settings
        self.pool = pool
        self.outbox = DeliveryOutbox(pool)
        self.schedule = RetrySchedule.from_settings(settings)
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
                    await sleep_or_stop(stop, OUTAGE_BACKOFF.delay(failures))
                    continue
                if done == 0:
                    await self._idle(stop)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Nothing was due: wait for a wake-up (new deliveries), ``stop``, or half a second."""
        self.wake.clear()
        waiter = asyncio.create_task(self.wake.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()

    async def deliver_due(self, http: httpx.AsyncClient) -> int:
        """Claim due deliveries (a lease: pushed into the future), send them; how many."""
        lease = timedelta(seconds=self.settings.webhook_timeout_seconds * 2 + 5)
        claimed = await self.outbox.claim_due(lease)
        circuits: dict[UUID, CircuitBreaker] = {}
        for claim in sorted(claimed, key=lambda c: c.notification_id):
            circuit = circuits.get(claim.webhook_id)
            if circuit is None:
                circuit = circuits[claim.webhook_id] = self._circuit(claim)
            await self._deliver(http, claim, circuit)
        return len(claimed)

    def _circuit(self, claim: Claim) -> CircuitBreaker:
        """The endpoint's breaker as claimed; shared by its deliveries in this round."""
        return CircuitBreaker(
            threshold=self.settings.webhook_circuit_threshold,
            cooldown=timedelta(seconds=self.settings.webhook_circuit_cooldown_seconds),
            failures=claim.consecutive_failures,
            open_until=claim.circuit_open_until,
        )

    async def _deliver(
        self, http: httpx.AsyncClient, claim: Claim, circuit: CircuitBreaker
    ) -> None:
        if claim.deleted_at is not None:
            await self.outbox.cancel(claim.id)
            return
        if circuit.open_until is not None and circuit.is_open(datetime.now(UTC)):
            # Opened during this round: wait for the cool-down, costs no attempt.
            await self.outbox.postpone(claim.id, circuit.open_until)
            return
        with webhook_span(claim.traceparent, claim.tracestate, claim.attempts + 1) as trace:
            sent = await self._send(http, claim, trace)
        await self._record(claim, circuit, sent)

    async def _send(
        self, http: httpx.AsyncClient, claim: Claim, trace: dict[str, str] | None = None
    ) -> Sent:
        """POST the signed payload, unless the target (resolved afresh) is refused; with
        ``traceparent`` (the attempt's span in the causing command's trace)."""
        body = payload(claim)
        headers = {
            **signed_headers(
                claim.secret,
                body,
                timestamp=int(time.time()),
                delivery_id=claim.id,
                event_id=claim.event_id,
            ),
            **(trace or {}),
        }
        started = time.perf_counter()

        def elapsed_ms() -> float:
            return (time.perf_counter() - started) * 1000

        refused = await self._refusal(claim.url)
        if refused is not None:
            return Sent(None, f"refused: {refused}", elapsed_ms())
        try:
            response = await http.post(claim.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return Sent(None, f"{type(e).__name__}: {e}"[:500], elapsed_ms())
        code = response.status_code
        error = None if 200 <= code < 300 else f"HTTP {code}"
        return Sent(code, error, elapsed_ms())

    async def _refusal(self, url: str) -> str | None:
        """Why not to POST to ``url`` now: its DNS may have changed since registration."""
        if self.settings.webhook_allow_private_targets:
            return None
        return await asyncio.to_thread(refusal, url)

    async def _record(self, claim: Claim, circuit: CircuitBreaker, sent: Sent) -> None:
        """Count the attempt, move the circuit, schedule what is next, and store all that."""
        now = datetime.now(UTC)
        self.attempted += 1
        if sent.ok:
            self.delivered += 1
            circuit.record_success()
        elif circuit.record_failure(now):
            log.warning("webhook %s: circuit open until %s", claim.webhook_id, circuit.open_until)
        attempt = claim.attempts + 1
        step = self.schedule.after(attempt, sent.ok, now, circuit.open_until)
        await self.outbox.record(
            AttemptRecord(
                delivery_id=claim.id,
                webhook_id=claim.webhook_id,
                attempt=attempt,
                status_code=sent.status_code,
                error=sent.error,
                duration_ms=sent.duration_ms,
                outcome=step.outcome,
                status=step.status,
                next_attempt_at=step.next_attempt_at,
                delivered_at=now if sent.ok else None,
                consecutive_failures=circuit.failures,
                circuit_open_until=circuit.open_until,
            )
        )
