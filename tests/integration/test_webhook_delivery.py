"""Webhook delivery against a real local HTTP server: retries, the circuit breaker, and
every attempt recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.conftest import PROBLEM, api_for
from tests.downstream import WebhookReceiver, eventually, running, unique
from tododb.application import TodoApplication
from tododb.consumers.core import ConsumerService
from tododb.consumers.notifications.delivery import DeliveryWorker
from tododb.consumers.notifications.handler import NotificationsHandler
from tododb.contract import parse_message
from tododb.domain import Todo
from tododb.infra.settings import Settings
from tododb.monitoring.workers import ConsumerMonitor
from tododb.projections.registry import ReadSide
from tododb.relay.envelope import to_message

pytestmark = pytest.mark.integration


def attempts(database_url: str, webhook_id: str) -> list[tuple[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT outcome, status_code FROM notifications.delivery_attempts "
            "WHERE webhook_id = %s ORDER BY id",
            (webhook_id,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def circuits(monitor: ConsumerMonitor) -> dict[str, float]:
    """``tododb_webhook_circuits`` as the notifications worker's ``/metrics`` shows it:
    webhook endpoints by circuit state."""
    return {
        sample.labels["state"]: sample.value
        for family in monitor.collect()
        if family.name == "tododb_webhook_circuits"
        for sample in family.samples
    }


@pytest.mark.asyncio(loop_scope="session")
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
        # Someone else acts (nobody is notified of their own actions): the owner is.
        todo = Todo.create(owner=owner, title="ping", actor=unique("editor"))
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


@pytest.mark.asyncio(loop_scope="session")
async def test_the_worker_metrics_count_webhook_circuits_by_state(
    settings: Settings, fresh_database_url: str
) -> None:
    """``tododb_webhook_circuits{state}`` as the notifications worker's ``/metrics``
    shows it, over webhooks in each state (a database of its own: other tests' delivery
    workers open and close circuits in the shared one)."""
    s = settings.model_copy(update={"database_url": fresh_database_url})
    consumer = ConsumerService(s, fresh_database_url, NotificationsHandler(), group_id="unused")
    await consumer.prepare(asyncio.Event())  # the notifications schema
    try:
        monitor = ConsumerMonitor(s, fresh_database_url, consumer)
        assert monitor.circuits is not None
        monitor.circuits.seconds = 0  # read afresh each time, not once a second
        assert circuits(monitor) == {"closed": 0, "open": 0, "half-open": 0}
        open_until = {"closed": None, "open": "1 hour", "half-open": "-1 second"}
        with psycopg.connect(fresh_database_url, autocommit=True) as conn:
            for n, (state, offset) in enumerate([*open_until.items(), ("closed", None)]):
                conn.execute(
                    "INSERT INTO notifications.webhooks (id, owner, url, secret, "
                    "circuit_open_until) VALUES (gen_random_uuid(), %s, %s, 'x', "
                    "now() + %s::interval)",
                    (f"owner-{n}", f"https://example.com/{state}", offset),
                )
            conn.execute(  # a deleted endpoint is not counted
                "INSERT INTO notifications.webhooks (id, owner, url, secret, deleted_at) "
                "VALUES (gen_random_uuid(), 'gone', 'https://example.com/gone', 'x', now())"
            )
        assert circuits(monitor) == {"closed": 2, "open": 1, "half-open": 1}
    finally:
        await consumer.close()


def test_registration_refuses_private_targets_unless_allowed(
    settings: Settings,
    todo_app: TodoApplication,
    read_side: ReadSide,
    auth: Callable[..., dict[str, str]],
) -> None:
    strict = settings.model_copy(update={"webhook_allow_private_targets": False})
    headers = auth(unique("mallory"))
    with TestClient(api_for(strict, todo_app, read_side, close_on_shutdown=False)) as api:
        for url in ("http://127.0.0.1:5432/", "http://localhost/x", "http://169.254.169.254/"):
            response = api.post(
                "/v1/webhooks", json={"url": url, "secret": "x" * 20}, headers=headers
            )
            assert response.status_code == 422, url
            assert response.headers["content-type"] == PROBLEM
            assert response.json()["type"].endswith("webhook-target-refused")
        assert api.get("/v1/webhooks", headers=headers).json()["items"] == []
        public = api.post(
            "/v1/webhooks",
            json={"url": "https://8.8.8.8/hook", "secret": "x" * 20},
            headers=headers,
        )
        assert public.status_code == 201


@pytest.mark.asyncio(loop_scope="session")
async def test_delivery_re_checks_the_target_and_sends_nothing_to_a_private_one(
    settings: Settings,
    database_url: str,
    client: TestClient,
    auth: Callable[..., dict[str, str]],
) -> None:
    owner = unique("trent")
    receiver = WebhookReceiver()
    try:
        # Registered while allowed (or its name pointed elsewhere then); now it is not.
        hook = client.post(
            "/v1/webhooks", json={"url": receiver.url, "secret": "x" * 20}, headers=auth(owner)
        ).json()
        strict = settings.model_copy(
            update={"webhook_allow_private_targets": False, "webhook_backoff_seconds": 0.05}
        )
        consumer = ConsumerService(strict, database_url, NotificationsHandler(), group_id="unused")
        await consumer.prepare(asyncio.Event())
        # Someone else acts (nobody is notified of their own actions): the owner is.
        todo = Todo.create(owner=owner, title="ping", actor=unique("editor"))
        message = to_message(todo.collect_events()[0], 1, owner)
        async with running(DeliveryWorker(strict, consumer.pool).run):
            await consumer._handle_once(parse_message(message.value, message.key, message.headers))
            await eventually(lambda: attempts(database_url, hook["id"]), what="an attempt")
        with psycopg.connect(database_url) as conn:
            outcome, status_code, error = conn.execute(
                "SELECT outcome, status_code, error FROM notifications.delivery_attempts "
                "WHERE webhook_id = %s ORDER BY id LIMIT 1",
                (hook["id"],),
            ).fetchone() or (None, None, None)
        assert (outcome, status_code) == ("retry", None)
        assert error.startswith("refused: 127.0.0.1 is not a public address")
        assert receiver.received == []
        await consumer.close()
    finally:
        receiver.close()
