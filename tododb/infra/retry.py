"""One retry policy for every process: exponential backoff with full jitter and a cap.

Full jitter (a delay drawn uniformly from zero to the exponential bound) spreads out
clients that failed together, so they do not retry in step against a recovering
server. ``Backoff`` is the pure schedule; ``retry_async`` and ``retry_sync`` call an
operation until it works, the retries are used up, or the caller asks to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(Exception):
    """Asked to stop while waiting to retry."""


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``attempt`` (from 1): uniform in [0, min(cap, base * 2**(attempt-1))]."""

    base: float = 0.5
    cap: float = 10.0

    def bound(self, attempt: int) -> float:
        """The largest delay ``attempt`` may draw (the schedule without jitter)."""
        return float(min(self.cap, self.base * 2.0 ** min(max(attempt, 1) - 1, 60)))

    def delay(self, attempt: int) -> float:
        return random.uniform(0, self.bound(attempt))  # noqa: S311 - not crypto


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, returning early when ``stop`` is set; True if it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def retry_async(
    operation: Callable[[], Awaitable[T]],
    *,
    stop: asyncio.Event,
    backoff: Backoff,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    attempts: int | None = None,
    logger: logging.Logger = log,
) -> T:
    """``await operation()`` until it returns; raises ``Stopped`` if ``stop`` is set first.

    Errors outside ``retry_on``, and the last one once ``attempts`` are used up, are raised.
    """
    attempt = 0
    while True:
        try:
            return await operation()
        except retry_on as e:
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            delay = backoff.delay(attempt)
            logger.warning("%s failed (attempt %d): %r; retrying in %.2fs", what, attempt, e, delay)
            if await sleep_or_stop(stop, delay):
                raise Stopped(what) from e


def retry_sync(
    operation: Callable[[], T],
    *,
    stop: threading.Event,
    backoff: Backoff,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    attempts: int | None = None,
    logger: logging.Logger = log,
) -> T:
    """The blocking twin of ``retry_async``, for threads and synchronous workers."""
    attempt = 0
    while True:
        try:
            return operation()
        except retry_on as e:
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            delay = backoff.delay(attempt)
            logger.warning("%s failed (attempt %d): %r; retrying in %.2fs", what, attempt, e, delay)
            if stop.wait(delay):
                raise Stopped(what) from e
