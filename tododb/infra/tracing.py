"""Tracing: OpenTelemetry spans, and the context every stored event carries.

A command runs in a ``CommandContext``: its correlation id (from ``X-Correlation-Id``,
else the incoming trace's id, else new), its causation id (the command that caused the
events) and the W3C trace context of the span it ran in. Every event the command stores
carries that context (``_meta`` in the stored state, see ``stamp``), so the relay, the
projections and the consumers can continue the same trace long after the request ended.

Spans are exported with OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, the standard OpenTelemetry variables;
otherwise nothing is exported, but trace context is still made and stored, so a trace
can be followed from the events alone.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

META = "_meta"
"""The key of an event's context in its stored state (old events have none)."""
CORRELATION_ID = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")
"""What ``X-Correlation-Id`` may hold: enough for UUIDs, ULIDs and dotted request ids."""
_TRACEPARENT = re.compile(
    r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
)
"""A valid W3C ``traceparent``: version ff and all-zero trace or parent ids are invalid."""
_TRACESTATE_MAX = 512

_propagator = TraceContextTextMapPropagator()
_current: ContextVar[CommandContext | None] = ContextVar("tododb_command", default=None)
_setup_lock = threading.Lock()
_provider: TracerProvider | None = None

tracer = trace.get_tracer("tododb")


@dataclass(frozen=True)
class CommandContext:
    """What an event records of the command that stored it."""

    correlation_id: str
    causation_id: str
    traceparent: str | None = None
    tracestate: str | None = None

    def as_meta(self) -> dict[str, str]:
        meta = {"correlation_id": self.correlation_id, "causation_id": self.causation_id}
        if self.traceparent is not None:
            meta["traceparent"] = self.traceparent
        if self.tracestate is not None:
            meta["tracestate"] = self.tracestate
        return meta

    @classmethod
    def from_meta(cls, meta: Any) -> CommandContext | None:
        """An event's stored context, or None (old events, or anything malformed)."""
        if not isinstance(meta, Mapping):
            return None
        correlation, causation = meta.get("correlation_id"), meta.get("causation_id")
        if not isinstance(correlation, str) or not isinstance(causation, str):
            return None
        parent, state = meta.get("traceparent"), meta.get("tracestate")
        return cls(
            correlation,
            causation,
            parent if isinstance(parent, str) and _TRACEPARENT.fullmatch(parent) else None,
            state if isinstance(state, str) and len(state) <= _TRACESTATE_MAX else None,
        )


_rng = random.Random()  # noqa: S311 (not secrets: see below)
"""Ids' own generator (seeded by the OS, and again in a forked child): not ``os.urandom``,
whose system call lets another thread take the GIL for up to a switch interval, on every
request; not the global one, which a test or a library may seed. These ids are not
secrets (the SDK's own id generator uses ``random`` too)."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_rng.seed)


def new_id() -> str:
    """A random (version 4) UUID, from ``_rng``."""
    return str(uuid.UUID(int=_rng.getrandbits(128), version=4))


def current_trace_headers() -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, if its context is valid:
    what the W3C propagator's ``inject`` writes for it, without the detour through a
    context."""
    span = trace.get_current_span()
    parent = _traceparent_of(span)
    if parent is None:
        return {}
    state = span.get_span_context().trace_state
    return (
        {"traceparent": parent, "tracestate": state.to_header()}
        if state
        else {"traceparent": parent}
    )


def trace_id_of(traceparent: str | None) -> str | None:
    return traceparent.split("-")[1] if traceparent else None


def _valid_trace_headers(incoming: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's ``traceparent`` (and ``tracestate``) if well formed, else nothing."""
    parent = (incoming or {}).get("traceparent", "")
    if not _TRACEPARENT.fullmatch(parent):
        return {}
    state = (incoming or {}).get("tracestate")
    if state and len(state) <= _TRACESTATE_MAX:
        return {"traceparent": parent, "tracestate": state}
    return {"traceparent": parent}


def _new_traceparent() -> str:
    """A new trace's context (W3C: random 128-bit trace id, 64-bit parent id, sampled),
    from ``_rng``."""
    trace_id, span_id = _rng.getrandbits(128) or 1, _rng.getrandbits(64) or 1  # 0: invalid
    return f"00-{trace_id:032x}-{span_id:016x}-01"


@contextmanager
def command_context(
    correlation_id: str | None = None,
    causation_id: str | None = None,
    *,
    incoming: Mapping[str, str] | None = None,
) -> Iterator[CommandContext]:
    """Run a command: events stored inside carry this context: the current span's trace
    when spans are exported, else the caller's (``incoming`` headers, if valid), else a
    new trace."""
    headers = current_trace_headers() if exporting() else _valid_trace_headers(incoming)
    parent = headers.get("traceparent") or _new_traceparent()
    ctx = CommandContext(
        correlation_id=correlation_id or trace_id_of(parent) or new_id(),
        causation_id=causation_id or f"command:{new_id()}",
        traceparent=parent,
        tracestate=headers.get("tracestate"),
    )
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def stamp(events: Any, span: trace.Span | None = None) -> None:
    """Give each event the current command's context (outside any, a new one, in
    ``span``'s trace if given): stored with the event's state by the library's mapper,
    read back as the ``_meta`` attribute."""
    ctx = _current.get()
    if ctx is None:
        if span is not None:
            parent = _traceparent_of(span)
        else:
            parent = current_trace_headers().get("traceparent")
        ctx = CommandContext(trace_id_of(parent) or new_id(), f"command:{new_id()}", parent, None)
    meta = ctx.as_meta()
    for e in events:
        if META not in vars(e):
            object.__setattr__(e, META, meta)


def _traceparent_of(span: trace.Span) -> str | None:
    """``span``'s W3C ``traceparent`` (the propagator's format, without its detour
    through a context)."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@contextmanager
def append_span() -> Iterator[trace.Span]:
    """The ``event_store.append`` span, a child of the current one. Not made current:
    nothing inside makes spans, and attaching it would cost a third of the span."""
    current = trace.get_current_span()
    context = current.get_span_context()
    if context.is_valid and not context.trace_flags.sampled and not current.is_recording():
        # An unsampled command (OTEL_TRACES_SAMPLER): the standard samplers (the
        # parent-based ones, and a trace id ratio, which decides the same again) leave its
        # children unsampled too, so the SDK's non-recording child would only cost.
        yield current
        return
    span = tracer.start_span("event_store.append")
    try:
        yield span
    except BaseException as error:
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}"))
        raise
    finally:
        span.end()


def event_context(domain_event: Any) -> CommandContext | None:
    return CommandContext.from_meta(vars(domain_event).get(META))


class _Fanout(SpanProcessor):
    """The provider's one processor: forwards to those added since (OTLP's batch
    processor, or a test's in-memory exporter), which can be removed again."""

    def __init__(self) -> None:
        self.targets: list[SpanProcessor] = []

    def on_start(self, span: Any, parent_context: otel_context.Context | None = None) -> None:
        for target in self.targets:
            target.on_start(span, parent_context)

    def on_end(self, span: Any) -> None:
        for target in self.targets:
            target.on_end(span)

    def shutdown(self) -> None:
        for target in self.targets:
            target.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(t.force_flush(timeout_millis) for t in self.targets)


_fanout = _Fanout()


def exporting() -> bool:
    """Whether spans go anywhere: the per-event spans of the workers are made only then."""
    return bool(_fanout.targets)


def setup_tracing(role: str, environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """Export spans with OTLP when the standard variables say so (idempotent).

    Without an exporter no SDK is installed at all: spans would cost a tenth of a
    request's time to go nowhere. Events still get a trace context (``command_context``
    makes one, or continues the caller's), so a trace can be followed from them later.
    ``OTEL_SDK_DISABLED=true`` turns exporting off even when an endpoint is set.
    """
    global _role
    _role = role
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return _provider
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        provider = _install()
        with _setup_lock:
            if not _otlp:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                _otlp.append(BatchSpanProcessor(OTLPSpanExporter()))
                _fanout.targets.append(_otlp[0])
        return provider
    return _provider


_role = "process"
_otlp: list[SpanProcessor] = []


def _install() -> TracerProvider:
    """The process's SDK tracer provider, made once, forwarding to ``_fanout``."""
    global _provider
    with _setup_lock:
        if _provider is None:
            _provider = TracerProvider(
                resource=Resource.create({"service.name": f"tododb-{_role}"})
            )
            _provider.add_span_processor(_fanout)
            trace.set_tracer_provider(_provider)
        return _provider


def add_processor(processor: SpanProcessor) -> None:
    """Export spans through ``processor`` too (tests add an in-memory exporter)."""
    _install()
    _fanout.targets.append(processor)


def remove_processor(processor: SpanProcessor) -> None:
    with contextlib.suppress(ValueError):
        _fanout.targets.remove(processor)


def _parent(traceparent: str | None, tracestate: str | None) -> otel_context.Context:
    carrier = {"traceparent": traceparent} if traceparent else {}
    if traceparent and tracestate:
        carrier["tracestate"] = tracestate
    return _propagator.extract(carrier)


@contextmanager
def handling(event: Any) -> Iterator[CommandContext]:
    """While a consumer handles ``event`` (a contract ``TodoEvent``), the event is the
    current cause: log lines meanwhile carry its correlation id (``log_context``)."""
    context = CommandContext(
        correlation_id=event.correlation_id or trace_id_of(event.traceparent) or event.id,
        causation_id=f"event:{event.id}",
        traceparent=event.traceparent,
        tracestate=event.tracestate,
    )
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


@contextmanager
def consumer_span(name: str, event: Any) -> Iterator[None]:
    """A span of ``event``'s own trace (a contract ``TodoEvent``: the command's context
    travels in its ``traceparent``), around handling it (``handling`` it, too)."""
    with (
        handling(event),
        tracer.start_as_current_span(
            f"{name} {event.type}",
            context=_parent(event.traceparent, event.tracestate),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.message.id": event.id,
                "tododb.correlation_id": event.correlation_id or "",
            },
        ),
    ):
        yield


@contextmanager
def webhook_span(
    traceparent: str | None, tracestate: str | None, attempt: int
) -> Iterator[dict[str, str]]:
    """A span per webhook attempt in the causing command's trace; the headers that carry
    it to the receiver (``traceparent``, ``tracestate``; none without a trace)."""
    with tracer.start_as_current_span(
        "webhook.deliver",
        context=_parent(traceparent, tracestate),
        kind=trace.SpanKind.CLIENT,
        attributes={"tododb.webhook.attempt": attempt},
    ):
        yield current_trace_headers()


def publish_spans(traceparents: list[str | None], topic: str, started_ns: int) -> None:
    """One ``relay.publish`` span per acknowledged message, each in its event's trace,
    from when the send began until now (made only when spans are exported)."""
    for parent in traceparents:
        if parent:
            span = tracer.start_span(
                f"relay.publish {topic}",
                context=_parent(parent, None),
                kind=trace.SpanKind.PRODUCER,
                start_time=started_ns,
                attributes={"messaging.destination.name": topic},
            )
            span.end()


def apply_spans(view: str, domain_events: list[Any], started_ns: int) -> None:
    """One ``projection.apply`` span per event of a committed batch, each in its event's
    trace, from when the batch began until now (made only when spans are exported)."""
    for domain_event in domain_events:
        context = event_context(domain_event)
        if context is not None and context.traceparent:
            span = tracer.start_span(
                f"projection.apply {view}",
                context=_parent(context.traceparent, context.tracestate),
                start_time=started_ns,
            )
            span.end()


def log_context() -> dict[str, str]:
    """The current span's and command's ids, for JSON log lines (a log_setup hook)."""
    fields: dict[str, str] = {}
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        fields["trace_id"] = format(span_context.trace_id, "032x")
        fields["span_id"] = format(span_context.span_id, "016x")
    command = _current.get()
    if command is not None:
        fields["correlation_id"] = command.correlation_id
        fields["causation_id"] = command.causation_id
    return fields
