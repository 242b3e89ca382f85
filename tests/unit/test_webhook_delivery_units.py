"""The pure parts of webhook delivery: circuit breaker, retry schedule, signer, payload."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from tododb.consumers.notifications.circuit import CircuitBreaker, circuit_state
from tododb.consumers.notifications.delivery import Sent, payload
from tododb.consumers.notifications.outbox import Claim
from tododb.consumers.notifications.schedule import RetrySchedule
from tododb.consumers.notifications.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    signed_headers,
    verify,
)
from tododb.infra.retry import Backoff
from tododb.infra.settings import Settings

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)


def breaker(threshold: int = 3, cooldown: float = 60.0) -> CircuitBreaker:
    return CircuitBreaker(threshold=threshold, cooldown=timedelta(seconds=cooldown))


# -- circuit breaker ---------------------------------------------------------------------


def test_circuit_opens_after_threshold_failures_in_a_row() -> None:
    c = breaker(threshold=3)
    assert [c.record_failure(NOW), c.record_failure(NOW)] == [False, False]
    assert c.state(NOW) == "closed"
    assert not c.is_open(NOW)
    assert c.record_failure(NOW) is True
    assert c.failures == 3
    assert c.open_until == NOW + timedelta(seconds=60)
    assert c.is_open(NOW)
    assert c.state(NOW) == "open"


def test_circuit_is_half_open_once_the_cooldown_is_over() -> None:
    c = breaker(threshold=1, cooldown=10)
    c.record_failure(NOW)
    later = NOW + timedelta(seconds=10)
    assert c.state(later - timedelta(microseconds=1)) == "open"
    assert c.state(later) == "half-open"
    assert not c.is_open(later)


def test_a_failure_while_half_open_reopens_with_a_fresh_cooldown() -> None:
    c = breaker(threshold=2, cooldown=10)
    c.record_failure(NOW)
    c.record_failure(NOW)
    later = NOW + timedelta(seconds=30)
    assert c.record_failure(later) is True
    assert c.failures == 3
    assert c.open_until == later + timedelta(seconds=10)


def test_a_success_closes_the_circuit_and_forgets_the_failures() -> None:
    c = breaker(threshold=1)
    c.record_failure(NOW)
    c.record_success()
    assert (c.failures, c.open_until, c.state(NOW)) == (0, None, "closed")


@pytest.mark.parametrize(
    ("open_until", "state"),
    [(None, "closed"), (NOW + timedelta(seconds=1), "open"), (NOW, "half-open")],
)
def test_circuit_state(open_until: datetime | None, state: str) -> None:
    assert circuit_state(open_until, NOW) == state


# -- retry schedule ----------------------------------------------------------------------


def fixed(seconds: float) -> RetrySchedule:
    return RetrySchedule(max_attempts=3, delay=lambda attempt: seconds * attempt)


def test_success_is_delivered() -> None:
    step = fixed(5).after(1, True, NOW, None)
    assert (step.outcome, step.status) == ("delivered", "delivered")


def test_failure_is_retried_after_the_delay_for_that_attempt() -> None:
    step = fixed(5).after(2, False, NOW, None)
    assert (step.outcome, step.status) == ("retry", "pending")
    assert step.next_attempt_at == NOW + timedelta(seconds=10)


def test_the_last_attempt_failing_gives_up() -> None:
    step = fixed(5).after(3, False, NOW, None)
    assert (step.outcome, step.status) == ("failed", "failed")
    assert fixed(5).after(3, True, NOW, None).outcome == "delivered"


def test_a_retry_waits_for_an_open_circuit() -> None:
    open_until = NOW + timedelta(minutes=5)
    assert fixed(5).after(1, False, NOW, open_until).next_attempt_at == open_until
    soon = NOW + timedelta(seconds=1)
    assert fixed(5).after(1, False, NOW, soon).next_attempt_at == NOW + timedelta(seconds=5)


def test_schedule_from_settings_uses_the_full_jitter_backoff() -> None:
    settings = Settings().model_copy(
        update={"webhook_max_attempts": 4, "webhook_backoff_seconds": 2.0}
    )
    schedule = RetrySchedule.from_settings(settings)
    assert schedule.max_attempts == 4
    for attempt in (1, 3, 40):
        bound = Backoff(base=2.0, cap=3600.0).bound(attempt)
        assert 0 <= schedule.delay(attempt) <= bound
    # Full jitter: anywhere from zero, not the old "at least half the bound".
    assert min(schedule.delay(1) for _ in range(200)) < 1.0


# -- signer ------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    signature = sign("s" * 20, 1700000000, b'{"a":1}')
    assert signature.startswith("sha256=")
    assert len(signature) == len("sha256=") + 64
    assert verify("s" * 20, "1700000000", b'{"a":1}', signature)
    assert not verify("s" * 20, "1700000001", b'{"a":1}', signature)  # replayed later
    assert not verify("s" * 20, "1700000000", b'{"a":2}', signature)  # tampered
    assert not verify("t" * 20, "1700000000", b'{"a":1}', signature)  # other secret


def test_signed_headers() -> None:
    event_id = uuid4()
    headers = signed_headers(
        "k" * 20, b"{}", timestamp=1700000000, delivery_id=7, event_id=event_id
    )
    assert headers == {
        "content-type": "application/json",
        SIGNATURE_HEADER: sign("k" * 20, 1700000000, b"{}"),
        TIMESTAMP_HEADER: "1700000000",
        "X-Tododb-Delivery": "7",
        "X-Tododb-Event-Id": str(event_id),
        "user-agent": "tododb-webhooks/1",
    }
    assert verify("k" * 20, headers[TIMESTAMP_HEADER], b"{}", headers[SIGNATURE_HEADER])


# -- payload and send results ------------------------------------------------------------


def test_payload_is_compact_json_of_the_notification() -> None:
    event_id, todo_id = uuid4(), uuid4()
    claim = Claim(
        id=3,
        attempts=0,
        webhook_id=uuid4(),
        url="https://example.com/hook",
        secret="k" * 20,
        deleted_at=None,
        consecutive_failures=0,
        circuit_open_until=None,
        notification_id=42,
        event_id=event_id,
        todo_id=todo_id,
        type="todos.task.created",
        message="created",
        data={"title": "ping"},
        occurred_at=NOW,
        actor="bob",
        correlation_id="c-1",
    )
    body = payload(claim)
    assert b" " not in body.replace(b'"todos.task.created"', b"")
    assert json.loads(body) == {
        "id": 42,
        "event_id": str(event_id),
        "todo_id": str(todo_id),
        "type": "todos.task.created",
        "message": "created",
        "data": {"title": "ping"},
        "occurred_at": NOW.isoformat(),
        "actor": "bob",
        "correlation_id": "c-1",
    }


@pytest.mark.parametrize(
    ("status_code", "ok"), [(200, True), (204, True), (299, True), (301, False), (500, False)]
)
def test_only_2xx_counts_as_sent(status_code: int, ok: bool) -> None:
    assert Sent(status_code, None, 1.0).ok is ok
    assert Sent(None, "refused: private", 1.0).ok is False
