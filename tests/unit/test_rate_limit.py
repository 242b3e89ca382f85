"""The rate limiter's pure core: token buckets on a fake clock, no I/O."""

from __future__ import annotations

import pytest

from tododb.api.positions import PendingWaits, WaitRefused, WaitSlots
from tododb.api.ratelimit import RateLimiter, TokenBucket, retry_after


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token takes 1/rate seconds
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) > 0


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert bucket.take(3600.0) == 0.0
    assert bucket.take(3600.0) == 0.0
    assert bucket.take(3600.0) > 0


def test_a_clock_going_backwards_adds_no_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)


def test_a_refused_request_costs_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=0.0)
    assert bucket.take(0.0) == 0.0
    for _ in range(100):
        assert bucket.take(0.5) > 0
    assert bucket.take(1.0) == 0.0


def test_the_limiter_keeps_a_bucket_per_key() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    assert limiter.take("alice") == 0.0
    assert limiter.take("alice") == 0.0
    assert limiter.take("alice") == pytest.approx(1.0)
    assert limiter.take("bob") == 0.0
    clock.now += 1.0
    assert limiter.take("alice") == 0.0


def test_the_limiter_forgets_the_least_recently_seen_key_beyond_its_cap() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, max_keys=2, clock=clock)
    assert limiter.take("a") == 0.0
    assert limiter.take("b") == 0.0
    assert limiter.take("a") > 0  # "a" is now the most recently seen
    assert limiter.take("c") == 0.0  # evicts "b"
    assert len(limiter) == 2
    assert limiter.take("a") > 0  # kept: still limited
    assert limiter.take("b") == 0.0  # forgotten: a fresh bucket


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.001, "1"), (0.5, "1"), (1.0, "1"), (1.01, "2"), (59.2, "60")]
)
def test_retry_after_is_whole_seconds_and_at_least_one(seconds: float, header: str) -> None:
    assert retry_after(seconds) == header


def test_wait_slots_cap_per_user_then_per_process_and_free_on_exit() -> None:
    slots = WaitSlots(max_total=3, max_per_user=2)
    with slots.hold("alice"), slots.hold("alice"):
        with pytest.raises(WaitRefused) as refused, slots.hold("alice"):
            pass
        assert refused.value.per_user
        with slots.hold("bob"):
            with pytest.raises(WaitRefused) as refused, slots.hold("carol"):
                pass
            assert not refused.value.per_user
        assert slots.active == 2
    assert slots.active == 0
    with slots.hold("alice"), slots.hold("alice"):
        pass


def test_pending_waits_hand_back_only_those_reached() -> None:
    pending: PendingWaits[str] = PendingWaits()
    pending.add("todos", 5, "a")
    pending.add("todos", 9, "b")
    pending.add("stats", 5, "c")
    pending.add("todos", 7, "gone")
    pending.discard("todos", "gone")
    assert pending.due({"todos": 7, "stats": 4}) == ["a"]
    assert len(pending) == 2
    assert sorted(pending.due({"todos": 9, "stats": 5})) == ["b", "c"]
    assert len(pending) == 0
