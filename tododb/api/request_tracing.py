"""Every request runs in a span and a command context (``tododb.infra.tracing``).

An incoming ``traceparent`` (W3C Trace Context) makes the request's span its child, so
the caller's trace continues through the API into every event the request stores, and
from there through the relay, Kafka, the consumers and the webhooks. ``X-Correlation-Id``
is kept (and answered back) when it is well formed; otherwise the trace id is the
correlation id. A malformed ``X-Correlation-Id`` is a 400; a malformed ``traceparent`` is
ignored, as the W3C recommendation says (a new trace starts).
"""

from __future__ import annotations

import json

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tododb.infra.tracing import (
    CORRELATION_ID,
    CommandContext,
    command_context,
    exporting,
    new_id,
    tracer,
)

_propagator = TraceContextTextMapPropagator()
_CORRELATION = b"x-correlation-id"


class RequestTracing:
    """ASGI middleware: a server span and a command context around each HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        correlation: str | None = None
        for name, value in scope.get("headers", []):
            if name in (b"traceparent", b"tracestate"):
                carrier[name.decode()] = value.decode("latin-1")
            elif name == _CORRELATION:
                correlation = value.decode("latin-1")
        if correlation is not None and not CORRELATION_ID.fullmatch(correlation):
            await _reject(scope, send)
            return
        method = scope.get("method", "HTTP")
        causation = f"request:{new_id()}"
        if not exporting():  # no span to make: the caller's trace context, or a new one
            with command_context(correlation, causation, incoming=carrier) as ctx:
                await self.app(scope, receive, _answering(send, ctx, None, scope, method))
            return
        span = tracer.start_span(
            method,  # renamed to "METHOD /route/{template}" once routed: few distinct names
            context=_propagator.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method},  # at the start: samplers see it
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            with command_context(correlation, causation) as ctx:
                await self.app(scope, receive, _answering(send, ctx, span, scope, method))
        except Exception as error:  # as the SDK's use_span: a cancelled request is no error
            _name(span, scope, method)  # a 500 is answered outside this middleware
            span.record_exception(error)
            description = f"{type(error).__name__}: {error}"
            span.set_status(trace.Status(trace.StatusCode.ERROR, description))
            raise
        finally:
            otel_context.detach(token)
            span.end()


def _answering(
    send: Send, ctx: CommandContext, span: trace.Span | None, scope: Scope, method: str
) -> Send:
    """``send``, adding ``X-Correlation-Id`` to the response (and naming the span)."""

    async def answer(message: Message) -> None:
        if message["type"] == "http.response.start":
            if span is not None:
                _name(span, scope, method, message["status"])
            headers = list(message.get("headers", []))
            headers.append((_CORRELATION, ctx.correlation_id.encode()))
            message = {**message, "headers": headers}
        await send(message)

    return answer


def _name(span: trace.Span, scope: Scope, method: str, status: int | None = None) -> None:
    """The span's route, once the request is routed, and its status code, once answered,
    set in one call (the SDK takes a lock per call)."""
    attributes: dict[str, str | int] = {}
    if status is not None:
        attributes["http.response.status_code"] = status
    route = getattr(scope.get("route"), "path", None)
    if route:
        span.update_name(f"{method} {route}")
        attributes["http.route"] = route
    if attributes:
        span.set_attributes(attributes)


async def _reject(scope: Scope, send: Send) -> None:
    body = json.dumps(
        {
            "type": "https://tododb.dev/problems/bad-correlation-id",
            "title": "Bad X-Correlation-Id",
            "status": 400,
            "detail": "X-Correlation-Id must be 1-128 characters of A-Z a-z 0-9 . _ : @ + = -",
            "instance": scope.get("path", ""),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
