"""Webhook delivery against a real local HTTP server: retries, the circuit breaker, and
every attempt recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.downstream import WebhookReceiver, eventually, running, unique
from tododb.consumers.core import ConsumerService
from tododb.consumers.notifications import NotificationsHandler
from tododb.consumers.webhooks import DeliveryWorker
from tododb.domain import Todo
from tododb.relay.envelope import parse_message, to_message
from tododb.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def attempts(database_url: str, webhook_id: str) -> list[tuple[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT outcome, status_code FROM notifications.delivery_attempts "
            "WHERE webhook_id = %s ORDER BY id",
            (webhook_id,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


async def test_failing_endpoint_is_retried_then_circuit_opens_then_recovers(
    settings: Settings,
    database_url: str,
    client: TestClient,
    auth: Callable[..., dict[str, str]],
) -> None:
    s = settings.model_copy(
        update={
            "webhook_max_attempts": 10,
            "webhook_backoff_seconds": 0.05,
            "webhook_circuit_threshold": 2,
            "webhook_circuit_cooldown_seconds": 1.0,
        }
    )
    owner = unique("carol")
    headers = auth(owner)
    receiver = WebhookReceiver(status=500)
    try:
        hook = client.post(
            "/v1/webhooks", json={"url": receiver.url, "secret": "x" * 20}, headers=headers
        ).json()
        consumer = ConsumerService(s, database_url, NotificationsHandler(), group_id="unused")
        await consumer.prepare(asyncio.Event())
        todo = Todo.create(owner=owner, title="ping")
        message = to_message(todo.collect_events()[0], 1, owner)
        event = parse_message(message.value, message.key, message.headers)
        worker = DeliveryWorker(s, consumer.pool)
        async with running(worker.run):
            await consumer._handle_once(event)
            await consumer._handle_once(event)  # a redelivery: no second notification
            await eventually(
                lambda: len(attempts(database_url, hook["id"])) == 2, what="two failed attempts"
            )
            listed = client.get("/v1/webhooks", headers=headers).json()["items"][0]
            assert listed["circuit"]["state"] == "open"
            assert listed["circuit"]["consecutive_failures"] == 2
            receiver.status = 204
            await eventually(
                lambda: attempts(database_url, hook["id"])[-1][0] == "delivered",
                what="delivery after the cool-down",
            )
        assert attempts(database_url, hook["id"]) == [
            ("retry", 500),
            ("retry", 500),
            ("delivered", 204),
        ]
        assert consumer.counters.handled == 1
        assert consumer.counters.duplicates == 1
        assert len(receiver.received) == 3
        circuit = client.get("/v1/webhooks", headers=headers).json()["items"][0]["circuit"]
        assert circuit == {"state": "closed", "consecutive_failures": 0, "open_until": None}
        await consumer.close()
    finally:
        receiver.close()
