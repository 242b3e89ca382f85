"""Every event records the command's correlation id, causation id and trace context
(issue #13), shown in ``/events`` and carried on the CloudEvent."""

from __future__ import annotations

import re
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import PROBLEM
from tododb.application import TodoApplication
from tododb.infra import tracing
from tododb.relay.envelope import to_cloudevent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_an_incoming_trace_and_correlation_id_reach_every_event(
    client: TestClient, headers: dict[str, str], todo_app: TodoApplication
) -> None:
    sent = {**headers, "traceparent": TRACEPARENT, "X-Correlation-Id": "order-7.checkout"}
    created = client.post("/v1/todos", json={"title": "Traced"}, headers=sent)
    assert created.status_code == 201, created.text
    assert created.headers["x-correlation-id"] == "order-7.checkout"
    todo_id = created.json()["id"]
    done = client.post(
        f"/v1/todos/{todo_id}/complete", headers={**headers, "traceparent": TRACEPARENT}
    )
    assert done.headers["x-correlation-id"] == TRACE_ID  # no id sent: the trace's id
    events = client.get(f"/v1/todos/{todo_id}/events", headers=headers).json()
    first, second = (e["metadata"] for e in events)
    assert first["correlation_id"] == "order-7.checkout"
    assert second["correlation_id"] == TRACE_ID
    for meta in (first, second):
        # The same trace: the caller's span, or the API's own when spans are exported.
        assert re.fullmatch(rf"00-{TRACE_ID}-[0-9a-f]{{16}}-01", meta["traceparent"])
        assert meta["causation_id"].startswith("request:")
    assert first["causation_id"] != second["causation_id"]
    assert "_meta" not in events[0]["data"]  # context, not a fact of the event
    # The relay's CloudEvent carries it: the Distributed Tracing extension.
    (stored,) = [e for e in todo_app.events.get(UUID(todo_id)) if e.originator_version == 1]
    attributes = to_cloudevent(stored, 1, "owner").get_attributes()
    assert attributes["traceparent"] == first["traceparent"]
    assert attributes["correlationid"] == "order-7.checkout"
    assert "_meta" not in (to_cloudevent(stored, 1, "owner").get_data() or {})


def test_without_trace_headers_a_new_trace_and_correlation_id_are_made(
    client: TestClient, headers: dict[str, str]
) -> None:
    created = client.post("/v1/todos", json={"title": "Untraced"}, headers=headers)
    correlation = created.headers["x-correlation-id"]
    (event,) = client.get(f"/v1/todos/{created.json()['id']}/events", headers=headers).json()
    assert event["metadata"]["correlation_id"] == correlation
    assert re.fullmatch(
        r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", event["metadata"]["traceparent"]
    )


@pytest.mark.parametrize(
    "correlation",
    ["a b", "x" * 129, "caf\u00e9".encode(), b"", b"a\x00b"],
    ids=["space", "129 characters", "not ASCII", "empty", "NUL"],
)
def test_a_bad_correlation_id_is_a_problem(
    client: TestClient, headers: dict[str, str], correlation: str | bytes
) -> None:
    bad = client.post(
        "/v1/todos", json={"title": "x"}, headers={**headers, "X-Correlation-Id": correlation}
    )
    assert (bad.status_code, bad.headers["content-type"]) == (400, PROBLEM)
    assert bad.json()["type"].endswith("/bad-correlation-id")


def test_the_longest_correlation_id_is_kept(client: TestClient, headers: dict[str, str]) -> None:
    longest = "A-z0.9_:@+=" * 11 + "x" * 7  # 128 characters, every kind allowed
    created = client.post(
        "/v1/todos", json={"title": "x"}, headers={**headers, "X-Correlation-Id": longest}
    )
    assert created.headers["x-correlation-id"] == longest
    (event,) = client.get(f"/v1/todos/{created.json()['id']}/events", headers=headers).json()
    assert event["metadata"]["correlation_id"] == longest


@pytest.mark.parametrize(
    "traceparent",
    [
        "nonsense",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # W3C: an all-zero trace id is invalid
        f"00-{TRACE_ID}-{'0' * 16}-01",  # and so is an all-zero parent id
        f"ff-{TRACE_ID}-00f067aa0ba902b7-01",  # and version ff
        TRACEPARENT.upper(),
    ],
    ids=["nonsense", "zero trace id", "zero parent id", "version ff", "upper case"],
)
def test_a_bad_traceparent_is_ignored_and_a_new_trace_made(
    client: TestClient, headers: dict[str, str], traceparent: str
) -> None:
    sent = {**headers, "traceparent": traceparent, "tracestate": "vendor=kept-only-if-valid"}
    created = client.post("/v1/todos", json={"title": "x"}, headers=sent)
    assert created.status_code == 201, created.text
    (event,) = client.get(f"/v1/todos/{created.json()['id']}/events", headers=headers).json()
    meta = event["metadata"]
    found = re.fullmatch(r"00-([0-9a-f]{32})-[0-9a-f]{16}-01", meta["traceparent"])
    assert found, meta
    trace_id = found.group(1)
    assert trace_id not in (TRACE_ID, "0" * 32)  # a new trace
    assert meta["correlation_id"] == trace_id == created.headers["x-correlation-id"]
    assert "tracestate" not in meta  # it belongs to the trace that was dropped


def test_a_callers_tracestate_is_kept_with_its_trace(
    client: TestClient, headers: dict[str, str]
) -> None:
    sent = {**headers, "traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE,rojo=1"}
    created = client.post("/v1/todos", json={"title": "x"}, headers=sent)
    (event,) = client.get(f"/v1/todos/{created.json()['id']}/events", headers=headers).json()
    assert event["metadata"]["tracestate"] == "congo=t61rcWkgMzE,rojo=1"
    assert event["metadata"]["traceparent"].split("-")[1] == TRACE_ID
    too_long = {**sent, "tracestate": "a=" + "b" * 600}  # over 512: dropped, trace kept
    created = client.post("/v1/todos", json={"title": "x"}, headers=too_long)
    (event,) = client.get(f"/v1/todos/{created.json()['id']}/events", headers=headers).json()
    assert "tracestate" not in event["metadata"]
    assert event["metadata"]["traceparent"].split("-")[1] == TRACE_ID


def test_events_stored_before_metadata_show_none(
    todo_app: TodoApplication, client: TestClient, headers: dict[str, str], user: str
) -> None:
    """An event without ``_meta`` (every event before this release) reads as null."""
    from tododb.domain import Todo

    todo = Todo.create(owner=user, title="Old")
    (event,) = todo.pending_events
    todo_app.recorder.insert_events([todo_app.mapper.to_stored_event(event)])
    (shown,) = client.get(f"/v1/todos/{todo.id}/events", headers=headers).json()
    assert shown["metadata"] is None


def test_a_traced_command_is_one_server_span_and_one_append_span(
    client: TestClient, headers: dict[str, str]
) -> None:
    """FastAPI traces by itself once a tracer provider is set: a second server span and
    one per dependency, endpoint and serialisation (a quarter of a command's CPU). It is
    off; a command is ``RequestTracing``'s span and the event store's append."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracing.add_processor(processor)
    try:
        sent = {**headers, "traceparent": TRACEPARENT}
        created = client.post("/v1/todos", json={"title": "Spans"}, headers=sent)
        assert created.status_code == 201, created.text
    finally:
        tracing.remove_processor(processor)
    # The session's projection worker may apply the event (its own span, in this trace)
    # before the processor is removed: the API's spans are the rest.
    spans = [
        s
        for s in exporter.get_finished_spans()
        if s.context.trace_id == int(TRACE_ID, 16) and not s.name.startswith("projection.")
    ]
    assert sorted((s.name, s.kind) for s in spans) == [
        ("POST /v1/todos", SpanKind.SERVER),
        ("event_store.append", SpanKind.INTERNAL),
    ]
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    (append,) = [s for s in spans if s.kind == SpanKind.INTERNAL]
    assert server.parent is not None
    assert server.parent.span_id == 0x00F067AA0BA902B7  # the caller's span
    assert append.parent is not None
    assert append.parent.span_id == server.context.span_id
    assert dict(server.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/v1/todos",
        "http.response.status_code": 201,
    }


def test_a_command_outside_any_request_is_stored_in_its_append_spans_trace(
    todo_app: TodoApplication,
) -> None:
    """A command with no request around it (the CLI, a script) starts its trace at the
    append: its events carry that span's context, so the trace can be followed from them."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracing.add_processor(processor)
    try:
        todo = todo_app.create_todo("spanless", title="No request").todo
    finally:
        tracing.remove_processor(processor)
    (event,) = todo_app.list_events("spanless", todo.id)
    (append,) = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "event_store.append" and s.parent is None
    ]
    assert event.metadata is not None
    context = append.context
    assert event.metadata["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    assert event.metadata["correlation_id"] == f"{context.trace_id:032x}"


def test_a_request_its_caller_did_not_sample_exports_no_span_but_stores_its_trace(
    client: TestClient, headers: dict[str, str]
) -> None:
    """Sampling (``OTEL_TRACES_SAMPLER``; a caller's decision is followed) makes a command
    that is not sampled record no span, which is what makes it cheap; its events still
    carry the trace, so it can be followed through the log, the relay and the consumers."""
    # A trace of its own: the other tests' sampled TRACE_ID events may still be applied by
    # the session's projection worker, in TRACE_ID's trace, while this test records.
    trace_id = "5c0a2f3577b34da6a3ce929d0e0e4737"
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracing.add_processor(processor)
    try:
        unsampled = f"00-{trace_id}-00f067aa0ba902b7-00"
        created = client.post(
            "/v1/todos", json={"title": "Unsampled"}, headers={**headers, "traceparent": unsampled}
        )
        assert created.status_code == 201, created.text
    finally:
        tracing.remove_processor(processor)
    assert [
        s for s in exporter.get_finished_spans() if s.context.trace_id == int(trace_id, 16)
    ] == []
    (event,) = client.get(f"/v1/todos/{created.json()['id']}/events", headers=headers).json()
    assert re.fullmatch(rf"00-{trace_id}-[0-9a-f]{{16}}-00", event["metadata"]["traceparent"])
    assert event["metadata"]["correlation_id"] == trace_id
