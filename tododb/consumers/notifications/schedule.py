"""What an attempt leads to: delivered, retried later, or given up. Pure, for testing.

The delay is injected (``Backoff.delay`` in production, full jitter) so that tests can
pin it down; a retry never comes before an open circuit's cool-down is over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from tododb.infra.retry import Backoff
from tododb.infra.settings import Settings

Outcome = Literal["delivered", "retry", "failed"]
"""``delivery_attempts.outcome``."""
Status = Literal["pending", "delivered", "failed"]
"""``deliveries.status`` after the attempt."""

BACKOFF_CAP_SECONDS = 3600.0

_STATUS: dict[Outcome, Status] = {"delivered": "delivered", "retry": "pending", "failed": "failed"}


@dataclass(frozen=True)
class Next:
    outcome: Outcome
    status: Status
    next_attempt_at: datetime


@dataclass(frozen=True)
class RetrySchedule:
    """Up to ``max_attempts`` attempts, ``delay(attempt)`` seconds apart."""

    max_attempts: int
    delay: Callable[[int], float]

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySchedule:
        backoff = Backoff(base=settings.webhook_backoff_seconds, cap=BACKOFF_CAP_SECONDS)
        return cls(settings.webhook_max_attempts, backoff.delay)

    def after(
        self, attempt: int, ok: bool, now: datetime, circuit_open_until: datetime | None
    ) -> Next:
        """The outcome of attempt number ``attempt`` (from 1) and when the next one is due."""
        if ok:
            outcome: Outcome = "delivered"
        else:
            outcome = "failed" if attempt >= self.max_attempts else "retry"
        retry_at = now + timedelta(seconds=self.delay(attempt))
        if circuit_open_until is not None and circuit_open_until > retry_at:
            retry_at = circuit_open_until
        return Next(outcome, _STATUS[outcome], retry_at)
