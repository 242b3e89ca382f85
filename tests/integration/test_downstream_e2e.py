"""End to end: commands (HTTP, and the application for a shared list) → event store →
relay → Kafka → notifications (and a signed webhook call) and analytics, all on real
servers (PostgreSQL, Tansu, a local HTTP server).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.downstream import WebhookReceiver, eventually, kafka_settings, running, unique
from tododb.application import TodoApplication
from tododb.consumers.notifications.delivery import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tododb.consumers.runner import AnalyticsService, NotificationsService
from tododb.devservers.tansu import BrokerHandle
from tododb.domain import Todo, TodoList, event_id
from tododb.entrypoints.bootstrap import build_relay
from tododb.infra.settings import Settings

pytestmark = pytest.mark.integration

SECRET = "webhook-secret-0123456789"


@pytest.mark.asyncio(loop_scope="session")
async def test_command_to_notification_webhook_and_analytics(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
    todo_app: TodoApplication,
    client: TestClient,
    auth: Callable[..., dict[str, str]],
) -> None:
    """alice shares a list with bob (editor) and carol (viewer); what each of them does
    reaches the others (never the one who acted), their webhooks, and the analytics."""
    s = kafka_settings(settings, kafka_broker)
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    headers = {u: auth(u) for u in (alice, bob, carol)}
    receiver = WebhookReceiver()
    try:
        hook = client.post(
            "/v1/webhooks", json={"url": receiver.url, "secret": SECRET}, headers=headers[bob]
        )
        assert hook.status_code == 201, hook.text
        assert client.get("/v1/webhooks", headers=headers[bob]).json()["items"][0]["circuit"] == {
            "state": "closed",
            "consecutive_failures": 0,
            "open_until": None,
        }

        relay = build_relay(s, database_url)
        notifications = NotificationsService(s, database_url, group_id=unique("notifications"))
        analytics = AnalyticsService(s, database_url, group_id=unique("analytics"))
        async with running(relay.run, notifications.run, analytics.run):
            home = TodoList.create(owner=alice, name="Home")
            home.set_member(bob, "editor", actor=alice)
            home.set_member(carol, "viewer", actor=alice)
            todo_app.save(home)
            # A list's events are on its own key: in no order with its todos'. Waiting
            # until the consumer knows the members keeps the expectations exact.
            await eventually(
                lambda: members_known(database_url, home.id) == 3, what="members known"
            )
            report = Todo.create(
                owner=alice,
                title="Write report",
                due=datetime(2030, 1, 1, 17, tzinfo=UTC),
                list_id=home.id,
                actor=alice,
            )
            todo_app.save(report)
            report.complete(actor=bob)
            todo_app.save(report)
            # Over HTTP, in alice's own Inbox: she is its only member, nobody to notify.
            milk = client.post("/v1/todos", json={"title": "Buy milk"}, headers=headers[alice])
            assert milk.status_code == 201, milk.text
            milk_id = milk.json()["id"]
            deleted = client.delete(f"/v1/todos/{milk_id}", headers=headers[alice])
            assert deleted.status_code == 204

            def page(user: str, n: int) -> list[dict[str, Any]] | None:
                items: list[dict[str, Any]] = client.get(
                    "/v1/notifications", headers=headers[user]
                ).json()["items"]
                return items if len(items) >= n else None

            created = 'New todo "Write report", due 2030-01-01T17:00:00+00:00'
            items = await eventually(lambda: page(carol, 2), what="carol's 2 notifications")
            # Newest first; one todo's events keep their order (one key, one partition).
            assert [n["message"] for n in items] == ['Completed "Write report"', created]
            assert {n["todo_id"] for n in items} == {str(report.id)}
            bobs = await eventually(lambda: page(bob, 1), what="bob's notification")
            assert [n["message"] for n in bobs] == [created]
            alices = await eventually(lambda: page(alice, 1), what="alice's notification")
            assert [n["message"] for n in alices] == ['Completed "Write report"']

            def analytics_totals() -> dict[str, Any] | None:
                body: dict[str, Any] = client.get("/v1/analytics", headers=headers[alice]).json()
                return body if body["totals"]["deleted"] == 1 else None

            # Per owner: alice's todos, whoever acted on them.
            figures = await eventually(analytics_totals, what="analytics figures")
            assert figures["totals"] == {"created": 2, "completed": 1, "reopened": 0, "deleted": 1}
            (day,) = figures["days"]
            assert day["mean_completion_seconds"] is not None
            assert 0 <= day["mean_completion_seconds"] < 60
            # Per actor: bob completed it; over HTTP, what the caller did.
            assert actor_events(database_url, bob) == {"todos.task.completed": 1}
            bobs_figures = client.get("/v1/analytics", headers=headers[bob]).json()
            assert bobs_figures["actions"] == {"todos.task.completed": 1}
            assert {n["actor"] for n in items} == {alice, bob}

            await eventually(lambda: len(receiver.received) >= 1, what="a webhook call")
            (call,) = receiver.received
            assert verify(
                SECRET,
                call.headers[TIMESTAMP_HEADER.lower()],
                call.body,
                call.headers[SIGNATURE_HEADER.lower()],
            )
            body = json.loads(call.body)
            assert (body["message"], body["actor"]) == (created, alice)

            # The milk's deletion was handled, and notified nobody (alice acted alone).
            await eventually(
                lambda: handled(database_url, event_id(UUID(milk_id), 2)), what="milk handled"
            )
            assert not any(n["todo_id"] == milk_id for n in page(alice, 0) or [])

            admin = auth("ops", admin=True)
            status = await eventually(
                lambda: (lambda b: b if b["lag"] == 0 else None)(
                    client.get("/v1/admin/relay", headers=admin).json()
                ),
                what="relay lag 0",
            )
            assert status["active"] is True
            assert status["topic"] == settings.kafka_topic  # the API's own configuration

        # Cursor pagination: newest first, no overlaps, no gaps.
        first = client.get("/v1/notifications?limit=1", headers=headers[carol]).json()
        assert len(first["items"]) == 1
        assert first["next_cursor"]
        second = client.get(
            f"/v1/notifications?limit=1&cursor={first['next_cursor']}", headers=headers[carol]
        ).json()
        assert [n["id"] for n in first["items"] + second["items"]] == [n["id"] for n in items]
        assert second["next_cursor"] is None
        assert notifications.worker.delivered == 1
    finally:
        receiver.close()


def members_known(database_url: str, list_id: UUID) -> int:
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('notifications.list_members')").fetchone()
        if exists is None or exists[0] is None:
            return 0
        row = conn.execute(
            "SELECT count(*) FROM notifications.list_members WHERE list_id = %s", (list_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def handled(database_url: str, event: UUID) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT 1 FROM notifications.inbox WHERE event_id = %s", (event,)
        ).fetchone()
    return row is not None


def actor_events(database_url: str, actor: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT type, sum(events) FROM analytics.actor_daily WHERE actor = %s GROUP BY type",
            (actor,),
        ).fetchall()
    return {t: int(n) for t, n in rows}


def test_downstream_endpoints_answer_problems_for_bad_input(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    headers = auth(unique("bob"))
    bad_url = client.post(
        "/v1/webhooks", json={"url": "ftp://x", "secret": SECRET}, headers=headers
    )
    assert bad_url.status_code == 422
    assert bad_url.headers["content-type"] == "application/problem+json"
    short_secret = client.post(
        "/v1/webhooks", json={"url": "http://x", "secret": "s"}, headers=headers
    )
    assert short_secret.status_code == 422
    bad_cursor = client.get("/v1/notifications?cursor=%%%", headers=headers)
    assert bad_cursor.status_code == 400
    assert bad_cursor.json()["type"].endswith("/bad-cursor")
    backwards = client.get("/v1/analytics?from=2030-01-02&to=2030-01-01", headers=headers)
    assert backwards.status_code == 422
    not_a_date = client.get("/v1/analytics?from=yesterday", headers=headers)
    assert not_a_date.status_code == 422
    unknown = client.delete("/v1/webhooks/00000000-0000-0000-0000-000000000000", headers=headers)
    assert unknown.status_code == 404
    assert client.get("/v1/admin/relay", headers=headers).status_code == 403
    assert client.get("/v1/notifications").status_code == 401

    created = client.post(
        "/v1/webhooks", json={"url": "https://example.com/h", "secret": SECRET}, headers=headers
    ).json()
    other = client.delete(f"/v1/webhooks/{created['id']}", headers=auth(unique("eve")))
    assert other.status_code == 404
    assert client.delete(f"/v1/webhooks/{created['id']}", headers=headers).status_code == 204
    assert client.get("/v1/webhooks", headers=headers).json() == {"items": []}
