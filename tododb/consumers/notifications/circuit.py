"""A circuit breaker per webhook endpoint, as plain state: no clock, no I/O.

After ``threshold`` failures in a row the endpoint gets no attempts for ``cooldown``, so
one dead receiver does not burn every delivery's retries; the first attempt after the
cool-down (half-open) either closes the circuit or opens it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

CircuitState = Literal["closed", "open", "half-open"]


def circuit_state(open_until: datetime | None, now: datetime) -> CircuitState:
    """Open while the cool-down runs, half-open once it is over until an attempt decides."""
    if open_until is None:
        return "closed"
    return "open" if open_until > now else "half-open"


@dataclass
class CircuitBreaker:
    """One endpoint's run of failures and, once it reached ``threshold``, its cool-down."""

    threshold: int
    cooldown: timedelta
    failures: int = 0
    open_until: datetime | None = None

    def is_open(self, now: datetime) -> bool:
        return self.state(now) == "open"

    def state(self, now: datetime) -> CircuitState:
        return circuit_state(self.open_until, now)

    def record_success(self) -> None:
        self.failures, self.open_until = 0, None

    def record_failure(self, now: datetime) -> bool:
        """Count a failure; True if it (re)opened the circuit, extending the cool-down."""
        self.failures += 1
        if self.failures < self.threshold:
            return False
        self.open_until = now + self.cooldown
        return True
