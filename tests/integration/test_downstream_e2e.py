"""End to end: HTTP command → event store → relay → Kafka → notifications (and a signed
webhook call) and analytics, all on real servers (PostgreSQL, Tansu, a local HTTP server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.downstream import WebhookReceiver, eventually, kafka_settings, running, unique
from tododb.consumers.notifications.delivery import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tododb.consumers.runner import AnalyticsService, NotificationsService
from tododb.devservers.tansu import BrokerHandle
from tododb.entrypoints.bootstrap import build_relay
from tododb.infra.settings import Settings

pytestmark = pytest.mark.integration

SECRET = "webhook-secret-0123456789"


@pytest.mark.asyncio(loop_scope="session")
async def test_command_to_notification_webhook_and_analytics(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
    client: TestClient,
    auth: Callable[..., dict[str, str]],
) -> None:
    s = kafka_settings(settings, kafka_broker)
    user = unique("alice")
    headers = auth(user)
    receiver = WebhookReceiver()
    try:
        hook = client.post(
            "/v1/webhooks", json={"url": receiver.url, "secret": SECRET}, headers=headers
        )
        assert hook.status_code == 201, hook.text
        assert client.get("/v1/webhooks", headers=headers).json()["items"][0]["circuit"] == {
            "state": "closed",
            "consecutive_failures": 0,
            "open_until": None,
        }

        relay = build_relay(s, database_url)
        notifications = NotificationsService(s, database_url, group_id=unique("notifications"))
        analytics = AnalyticsService(s, database_url, group_id=unique("analytics"))
        async with running(relay.run, notifications.run, analytics.run):
            report = client.post(
                "/v1/todos",
                json={"title": "Write report", "due": "2030-01-01T17:00:00Z"},
                headers=headers,
            ).json()
            assert client.post(f"/v1/todos/{report['id']}/complete", headers=headers).is_success
            milk = client.post("/v1/todos", json={"title": "Buy milk"}, headers=headers).json()
            assert client.delete(f"/v1/todos/{milk['id']}", headers=headers).status_code == 204

            def notification_page() -> list[dict[str, Any]] | None:
                items: list[dict[str, Any]] = client.get(
                    "/v1/notifications", headers=headers
                ).json()["items"]
                return items if len(items) == 4 else None

            items = await eventually(notification_page, what="4 notifications")
            # Newest first; one todo's events keep their order (one key, one partition).
            assert sorted(n["message"] for n in items) == [
                'Completed "Write report"',
                'Deleted "Buy milk"',
                'New todo "Buy milk"',
                'New todo "Write report", due 2030-01-01T17:00:00+00:00',
            ]
            assert [n["type"] for n in items if n["todo_id"] == milk["id"]] == [
                "todos.task.deleted",
                "todos.task.created",
            ]

            def analytics_totals() -> dict[str, Any] | None:
                body: dict[str, Any] = client.get("/v1/analytics", headers=headers).json()
                return body if body["totals"]["deleted"] == 1 else None

            figures = await eventually(analytics_totals, what="analytics figures")
            assert figures["totals"] == {"created": 2, "completed": 1, "reopened": 0, "deleted": 1}
            (day,) = figures["days"]
            assert day["mean_completion_seconds"] is not None
            assert 0 <= day["mean_completion_seconds"] < 60

            await eventually(lambda: len(receiver.received) >= 4, what="4 webhook calls")
            for call in receiver.received:
                assert verify(
                    SECRET,
                    call.headers[TIMESTAMP_HEADER.lower()],
                    call.body,
                    call.headers[SIGNATURE_HEADER.lower()],
                )
            assert sorted(b["message"] for b in receiver.bodies()) == sorted(
                n["message"] for n in items
            )

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
        first = client.get("/v1/notifications?limit=3", headers=headers).json()
        assert len(first["items"]) == 3
        assert first["next_cursor"]
        second = client.get(
            f"/v1/notifications?limit=3&cursor={first['next_cursor']}", headers=headers
        ).json()
        assert [n["id"] for n in first["items"] + second["items"]] == [n["id"] for n in items]
        assert second["next_cursor"] is None
        assert notifications.worker.delivered == 4
    finally:
        receiver.close()


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
