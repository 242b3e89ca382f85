"""``RequestTracing``'s server span when a request fails, and the append span of an
unsampled command (issue #13)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode
from starlette.types import Message, Receive, Scope, Send

from tododb.api.request_tracing import RequestTracing
from tododb.infra import tracing


async def _failing(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("the handler broke")


async def _receive() -> Message:
    return {"type": "http.request", "body": b""}


async def _send(message: Message) -> None:
    pass


def test_a_request_that_raises_ends_its_span_as_an_error_and_leaves_no_context_behind() -> None:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracing.add_processor(processor)
    scope: Scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}

    async def request() -> dict[str, str]:
        with pytest.raises(RuntimeError):
            await RequestTracing(_failing)(scope, _receive, _send)
        return tracing.current_trace_headers()  # in the same task: the span was detached

    try:
        after = asyncio.run(request())
    finally:
        tracing.remove_processor(processor)
    (span,) = exporter.get_finished_spans()
    assert (span.name, span.kind) == ("GET", SpanKind.SERVER)
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    assert after == {}


def test_an_unsampled_commands_append_makes_no_span_of_its_own() -> None:
    """Its parent is not recorded, so neither would the child be: the SDK is not asked."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracing.add_processor(processor)
    unsampled = NonRecordingSpan(SpanContext(0x5C0A, 0x00F0, is_remote=True))
    try:
        with trace.use_span(unsampled), tracing.append_span() as span:
            assert span is unsampled
        with tracing.append_span() as root:  # no command around it: a span of its own
            assert root.is_recording()
    finally:
        tracing.remove_processor(processor)
    assert [s.name for s in exporter.get_finished_spans()] == ["event_store.append"]
