"""Spans leave a real `todo serve` over OTLP/HTTP when the standard variable names an
endpoint (issue #13); with none set, no span is made at all."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import TEST_SECRET, wait_until
from tests.servers import serving
from tododb.api.auth import issue_token

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class Collector:
    """An OTLP/HTTP collector on a local port that keeps every export it is sent."""

    def __init__(self) -> None:
        self.exports: list[tuple[str, bytes]] = []
        received = self.exports

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append((self.path, body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> list[Any]:
        found = []
        for path, body in list(self.exports):
            assert path == "/v1/traces", path
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    found.extend((resource.resource, span) for span in scope.spans)
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.thread.start()
    try:
        yield c
    finally:
        c.server.shutdown()
        c.server.server_close()


AUTH = {"Authorization": f"Bearer {issue_token(TEST_SECRET, 'otlp-user')}"}
CALLER = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def post_traced_todo(base: str) -> httpx.Response:
    headers = {**AUTH, "traceparent": CALLER}
    return httpx.post(f"{base}/v1/todos", json={"title": "exported"}, headers=headers)


def stored_traceparent(base: str, todo_id: str) -> str:
    (event,) = httpx.get(f"{base}/v1/todos/{todo_id}/events", headers=AUTH).json()
    traceparent: str = event["metadata"]["traceparent"]
    return traceparent


def test_spans_are_exported_with_otlp_when_the_endpoint_is_set(
    fresh_database_url: str,
    tmp_path: Path,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # the batch processor's wait, ms
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    with serving(fresh_database_url, tmp_path, rate_limit_enabled="false") as (base, _):
        created = post_traced_todo(base)
        assert created.status_code == 201, created.text

        def both_spans() -> bool:
            names = {s.name for _, s in collector.spans() if s.trace_id.hex() == TRACE_ID}
            return {"POST /v1/todos", "event_store.append"} <= names

        wait_until(both_spans, timeout=30, what="the request's spans at the collector")
        stored = stored_traceparent(base, created.json()["id"])
    ours = [(r, s) for r, s in collector.spans() if s.trace_id.hex() == TRACE_ID]
    server = next(s for _, s in ours if s.name == "POST /v1/todos")
    append = next(s for _, s in ours if s.name == "event_store.append")
    assert server.parent_span_id.hex() == "00f067aa0ba902b7"  # the caller's span
    assert append.parent_span_id == server.span_id
    assert stored == f"00-{TRACE_ID}-{server.span_id.hex()}-01"  # the events name its span
    resource = {a.key: a.value.string_value for a in ours[0][0].attributes}
    assert resource["service.name"] == "tododb-api"


def test_without_an_endpoint_no_span_is_made_and_the_callers_context_is_stored(
    fresh_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No SDK at all: the request makes no span of its own (with one, the stored context
    would name it, as above), and its events carry the caller's context unchanged."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    with serving(fresh_database_url, tmp_path, rate_limit_enabled="false") as (base, _):
        created = post_traced_todo(base)
        assert created.status_code == 201, created.text
        assert stored_traceparent(base, created.json()["id"]) == CALLER
