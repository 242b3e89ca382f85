"""JSON log lines (``TODO_LOG_FORMAT=json``) and the progress rule of worker readiness."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from tododb.entrypoints import log_setup
from tododb.entrypoints.log_setup import JsonFormatter, add_context_hook, set_role
from tododb.infra.probes import Progress, run_checks


def record(message: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("tododb.test", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_json_line_has_the_fields_and_the_record_s_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(log_setup, "_context_hooks", [])
    set_role("relay")
    line = JsonFormatter().format(record("published %s", correlation_id="c-1", trace_id=None))
    fields = json.loads(line)
    assert "\n" not in line
    assert fields["message"] == "published %s"
    assert (fields["level"], fields["logger"], fields["role"]) == (
        "WARNING",
        "tododb.test",
        "relay",
    )
    assert fields["timestamp"].endswith("+00:00")
    assert fields["correlation_id"] == "c-1"
    assert "trace_id" not in fields  # absent or None: left out


def test_context_hooks_fill_what_the_record_lacks_and_a_broken_one_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(log_setup, "_context_hooks", [])

    def broken() -> dict[str, str]:
        raise RuntimeError("no span")

    add_context_hook(broken)
    add_context_hook(lambda: {"trace_id": "t" * 32, "span_id": "s" * 16, "correlation_id": "h"})
    fields = json.loads(JsonFormatter().format(record("x", correlation_id="own")))
    assert (fields["trace_id"], fields["span_id"]) == ("t" * 32, "s" * 16)
    assert fields["correlation_id"] == "own"  # the record's own wins


def test_exceptions_are_kept_in_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    fields = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in fields["exc_info"]


def test_progress_is_ready_when_caught_up_or_moving_and_not_when_stalled() -> None:
    progress = Progress(stall_after=0.0)
    assert progress.check(5, 0)[0] is True  # caught up
    assert progress.check(6, 3)[0] is True  # it moved just now
    ok, why = progress.check(6, 3)  # still: stalled after 0 s
    assert ok is False
    assert "stalled" in why
    assert Progress(stall_after=60.0).check(1, 10)[0] is True  # within the window


def test_a_check_that_raises_fails_the_probe_with_its_reason() -> None:
    def down() -> tuple[bool, str]:
        raise ConnectionError("refused")

    ok, results = run_checks({"fine": lambda: (True, "ok"), "database": down})
    assert ok is False
    assert results["fine"] == {"ok": True, "detail": "ok"}
    assert results["database"]["detail"] == "ConnectionError: refused"


def test_a_json_line_inside_a_command_carries_its_trace_and_correlation_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tododb.infra import tracing

    monkeypatch.setattr(log_setup, "_context_hooks", [])
    add_context_hook(tracing.log_context)
    processor = SimpleSpanProcessor(InMemorySpanExporter())
    tracing.add_processor(processor)  # spans are real only while something exports
    try:
        with (
            tracing.tracer.start_as_current_span("request") as span,
            tracing.command_context("order-7", "request:1"),
        ):
            fields = json.loads(JsonFormatter().format(record("stored")))
    finally:
        tracing.remove_processor(processor)
    assert fields["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert (fields["correlation_id"], fields["causation_id"]) == ("order-7", "request:1")


def test_a_json_line_while_a_consumer_handles_an_event_carries_its_trace_and_correlation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No SDK here, as in a worker that exports nothing: the event's own context."""
    from tododb.contract import TodoEvent
    from tododb.infra import tracing

    monkeypatch.setattr(log_setup, "_context_hooks", [])
    add_context_hook(tracing.log_context)
    set_role("notifications")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    event = TodoEvent(
        id="evt-1",
        type="todos.task.created",
        todo_id="t-1",
        owner="alice",
        time=datetime.now(UTC),
        sequence=1,
        version=1,
        data={},
        actor="bob",
        traceparent=f"00-{trace_id}-00f067aa0ba902b7-01",
        correlation_id="order-7",
    )
    with tracing.consumer_span("notifications.handle", event):
        fields = json.loads(JsonFormatter().format(record("notified")))
    outside = json.loads(JsonFormatter().format(record("idle")))
    assert (fields["trace_id"], fields["correlation_id"]) == (trace_id, "order-7")
    assert (fields["causation_id"], fields["role"]) == ("event:evt-1", "notifications")
    assert "correlation_id" not in outside


@pytest.mark.parametrize(
    ("level", "wanted"),
    [(None, True), ("INFO", True), ("debug", True), ("WARNING", False), ("error", False)],
)
def test_the_api_writes_access_lines_only_at_info_or_below(
    monkeypatch: pytest.MonkeyPatch, level: str | None, wanted: bool
) -> None:
    if level is None:
        monkeypatch.delenv("TODO_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TODO_LOG_LEVEL", level)
    assert log_setup.access_log_wanted() is wanted
