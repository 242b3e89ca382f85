"""``RequestTracing``'s server span when a request fails or is cancelled, and the append
span of an unsampled command (issue #13)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from starlette.types import Message, Receive, Scope, Send

from tododb.api.request_tracing import RequestTracing
from tododb.infra import tracing


async def _failing(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("the handler broke")


async def _cancelled(scope: Scope, receive: Receive, send: Send) -> None:
    raise asyncio.CancelledError


async def _receive() -> Message:
    return {"type": "http.request", "body": b""}


async def _send(message: Message) -> None:
    pass


def _served(app: Any) -> tuple[ReadableSpan, dict[str, str]]:
    """``app`` behind ``RequestTracing`` for one GET that ends in an exception: its one
    span, and the trace headers left current afterwards in the same task."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracing.add_processor(processor)
    scope: Scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}

    async def request() -> dict[str, str]:
        with pytest.raises(BaseException):  # noqa: PT011 (each test checks which below)
            await RequestTracing(app)(scope, _receive, _send)
        return tracing.current_trace_headers()

    try:
        after = asyncio.run(request())
    finally:
        tracing.remove_processor(processor)
    (span,) = exporter.get_finished_spans()
    return span, after


def test_a_request_that_raises_ends_its_span_as_an_error_and_leaves_no_context_behind() -> None:
    span, after = _served(_failing)
    assert (span.name, span.kind) == ("GET", SpanKind.SERVER)
    assert dict(span.attributes or {}) == {"http.request.method": "GET"}
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "RuntimeError: the handler broke"
    assert [e.name for e in span.events] == ["exception"]
    assert after == {}  # the span was detached


def test_a_cancelled_request_ends_its_span_without_calling_it_an_error() -> None:
    """As the SDK's ``use_span``: a client gone or a shutdown cancels, nothing failed."""
    span, after = _served(_cancelled)
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()
    assert after == {}


def test_an_unsampled_commands_append_makes_no_span_of_its_own() -> None:
    """Its parent is not recorded, so neither would the child be: the SDK is not asked."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracing.add_processor(processor)
    unsampled = NonRecordingSpan(SpanContext(0x5C0A, 0x00F0, is_remote=True))
    # Not recorded here, but sampled by its caller: a parent-based sampler records a child.
    sampled = NonRecordingSpan(
        SpanContext(0x5C0B, 0x00F1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    )
    try:
        with trace.use_span(unsampled), tracing.append_span() as span:
            assert span is unsampled
        with trace.use_span(sampled), tracing.append_span() as child:
            assert child is not sampled
        with tracing.append_span() as root:  # no command around it: a span of its own
            assert root is not unsampled
    finally:
        tracing.remove_processor(processor)
    in_sampled_trace, own = exporter.get_finished_spans()
    assert (in_sampled_trace.name, in_sampled_trace.context.trace_id) == (
        "event_store.append",
        0x5C0B,
    )
    assert own.name == "event_store.append"
    assert own.parent is None


def test_a_forked_child_makes_ids_of_its_own() -> None:
    """Ids come from a generator of their own (no system call a request), reseeded in a
    forked child: two processes forked from one never share a correlation id."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, tracing.new_id().encode())
        os._exit(0)
    os.close(write)
    try:
        ours, theirs = tracing.new_id(), os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert len(theirs) == len(ours) == 36
    assert theirs != ours
