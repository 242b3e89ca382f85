"""One command, one trace (issue #13): the API span, the append, the projection apply,
the relay publish, the consumer handling and the webhook call, all in the trace the
client started with ``traceparent``; its id on the CloudEvent and in the webhook request;
the correlation id in ``/events`` and in the notification. Real PostgreSQL and Tansu;
spans go to the SDK's in-memory exporter."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.downstream import (
    WebhookReceiver,
    eventually,
    kafka_settings,
    read_topic,
    running,
    unique,
)
from tests.integration.test_downstream_e2e import members_known
from tododb import contract
from tododb.application import TodoApplication
from tododb.consumers.runner import NotificationsService
from tododb.devservers.tansu import BrokerHandle
from tododb.entrypoints.bootstrap import build_relay
from tododb.infra import tracing
from tododb.infra.settings import Settings

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracing.add_processor(processor)
    try:
        yield exporter
    finally:
        tracing.remove_processor(processor)


@pytest.mark.asyncio(loop_scope="session")
async def test_one_command_is_one_trace_from_the_api_to_the_webhook(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
    todo_app: TodoApplication,
    client: TestClient,
    projection_worker: threading.Event,
    auth: Callable[..., dict[str, str]],
    spans: InMemorySpanExporter,
) -> None:
    s = kafka_settings(settings, kafka_broker)
    alice, bob = unique("alice"), unique("bob")
    receiver = WebhookReceiver()
    try:
        hook = client.post(
            "/v1/webhooks", json={"url": receiver.url, "secret": "s" * 24}, headers=auth(bob)
        )
        assert hook.status_code == 201, hook.text
        home = client.post("/v1/lists", json={"name": "Home"}, headers=auth(alice)).json()
        shared = client.put(
            f"/v1/lists/{home['id']}/members/{bob}", json={"role": "editor"}, headers=auth(alice)
        )
        assert shared.status_code == 200, shared.text
        relay = build_relay(s, database_url)
        notifications = NotificationsService(s, database_url, group_id=unique("notifications"))
        async with running(relay.run, notifications.run):
            # A list's events are on its own key: wait until the consumer knows bob.
            await eventually(
                lambda: members_known(database_url, UUID(home["id"])) == 2, what="members"
            )
            created = client.post(
                "/v1/todos",
                json={"title": "Traced", "list_id": home["id"]},
                headers={**auth(alice), "traceparent": TRACEPARENT, "X-Correlation-Id": "c-42"},
            )
            assert created.status_code == 201, created.text
            todo_id = created.json()["id"]
            await eventually(lambda: len(receiver.received) >= 1, what="the webhook call")

            def finished() -> set[str] | None:
                names = {sp.name.split(" ")[0] for sp in _in_trace(spans)}
                wanted = {
                    "POST",
                    "event_store.append",
                    "projection.apply",
                    "relay.publish",
                    "notifications.handle",
                    "webhook.deliver",
                }
                return names if wanted <= names else None

            names = await eventually(finished, what="every span of the trace")
            assert "notifications.handle" in names
            messages = await read_topic(s.kafka_bootstrap_servers, s.kafka_topic)
        (call,) = receiver.received
        assert call.headers["traceparent"].split("-")[1] == TRACE_ID
        on_topic = [contract.parse_message(m.value) for m in messages]
        (event,) = [e for e in on_topic if e.todo_id == todo_id]
        assert (event.traceparent or "").split("-")[1] == TRACE_ID
        assert event.correlation_id == "c-42"
        (stored,) = client.get(f"/v1/todos/{todo_id}/events", headers=auth(alice)).json()
        assert stored["metadata"]["correlation_id"] == "c-42"
        (note,) = client.get("/v1/notifications", headers=auth(bob)).json()["items"]
        assert note["correlation_id"] == "c-42"
        # One trace: every span's parent is in it, up to the client's own span.
        trace_spans = _in_trace(spans)
        ids = {sp.context.span_id for sp in trace_spans}
        for sp in trace_spans:
            assert sp.parent is not None
            assert sp.parent.span_id in ids or sp.parent.span_id == int("b7ad6b7169203331", 16)
    finally:
        receiver.close()


def _in_trace(spans: InMemorySpanExporter) -> list[Any]:
    return [sp for sp in spans.get_finished_spans() if sp.context.trace_id == int(TRACE_ID, 16)]
