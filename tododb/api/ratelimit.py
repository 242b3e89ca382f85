"""Per-user rate limits: a token bucket per user per process, for commands and for queries.

The core (``TokenBucket``, ``RateLimiter``) is pure and takes its clock from outside;
``check_rate`` applies it to the authenticated caller (``auth.current_user``), keyed by
the user id: unauthenticated calls are never counted (they get 401).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tododb.api.problems import Problem
from tododb.infra.settings import Settings

COMMAND_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
QUERY_METHODS = frozenset({"GET", "HEAD"})


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; each request takes one."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.updated = now

    def take(self, now: float) -> float:
        """0.0 if a token was taken, else the seconds until one will be there."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key, at most ``max_keys`` of them (least recently seen evicted).

    Evicting a key only forgets its debt: its next request starts on a full bucket, which
    after ``burst / rate`` quiet seconds it would have had anyway.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """0.0 if ``key`` may go ahead, else the seconds until it may."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
                if len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            return bucket.take(now)


@dataclass(frozen=True)
class RateLimits:
    """The buckets of one API process: commands and queries are counted apart."""

    commands: RateLimiter
    queries: RateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits | None:
        """None when rate limiting is switched off."""
        if not settings.rate_limit_enabled:
            return None
        return cls(
            commands=RateLimiter(
                settings.rate_limit_commands_per_second,
                settings.rate_limit_commands_burst,
                max_keys=settings.rate_limit_max_users,
            ),
            queries=RateLimiter(
                settings.rate_limit_queries_per_second,
                settings.rate_limit_queries_burst,
                max_keys=settings.rate_limit_max_users,
            ),
        )

    def for_method(self, method: str) -> tuple[str, RateLimiter] | None:
        """The bucket kind and limiter counting ``method``; None for methods not limited."""
        if method in COMMAND_METHODS:
            return "commands", self.commands
        if method in QUERY_METHODS:
            return "queries", self.queries
        return None


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def check_rate(limits: RateLimits | None, method: str, user_id: str) -> None:
    """429 once ``user_id`` has used up their bucket for ``method``'s kind; nothing when
    rate limiting is off or the method is not counted."""
    counted = limits.for_method(method) if limits is not None else None
    if counted is None:
        return
    kind, limiter = counted
    wait = limiter.take(user_id)
    if wait > 0:
        raise Problem(
            429,
            "Too many requests",
            f"rate limit for {kind} reached: {limiter.rate:g} per second, "
            f"bursts of {limiter.burst}",
            type_="rate-limited",
            headers={"Retry-After": retry_after(wait)},
            limit=kind,
        )
