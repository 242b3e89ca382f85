"""The one retry policy: exponential bounds, full jitter, a cap; and the retry loops."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tododb.infra.retry import Backoff, Stopped, retry_async, retry_sync


def test_bounds_double_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=5.0)
    assert [backoff.bound(n) for n in (1, 2, 3, 4)] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert backoff.bound(10) == 5.0
    assert backoff.bound(10_000) == 5.0  # no overflow however long the outage


def test_full_jitter_draws_from_zero_to_the_bound() -> None:
    backoff = Backoff(base=0.1, cap=5.0)
    for attempt in (1, 3, 10):
        delays = [backoff.delay(attempt) for _ in range(500)]
        assert all(0 <= d <= backoff.bound(attempt) for d in delays)
        assert min(delays) < backoff.bound(attempt) / 4  # the whole range, not half
        assert len(set(delays)) > 1


def test_retry_sync_returns_after_transient_failures() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "up"

    result = retry_sync(flaky, stop=threading.Event(), backoff=Backoff(0.001, 0.001), what="t")
    assert result == "up"
    assert len(calls) == 3


def test_retry_sync_raises_errors_it_does_not_retry_and_the_last_attempt() -> None:
    def broken() -> None:
        raise KeyError("not transient")

    with pytest.raises(KeyError):
        retry_sync(
            broken,
            stop=threading.Event(),
            backoff=Backoff(0.001, 0.001),
            what="t",
            retry_on=(ConnectionError,),
        )
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        retry_sync(
            down, stop=threading.Event(), backoff=Backoff(0.001, 0.001), what="t", attempts=3
        )
    assert len(calls) == 3


async def test_retry_async_stops_when_asked() -> None:
    stop = asyncio.Event()

    async def down() -> None:
        stop.set()
        raise ConnectionError("down")

    with pytest.raises(Stopped):
        await retry_async(down, stop=stop, backoff=Backoff(10.0, 10.0), what="t")
