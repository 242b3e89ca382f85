"""Log configuration for every `todo` process (``TODO_LOG_LEVEL``, ``TODO_LOG_FORMAT``).

``TODO_LOG_FORMAT=json`` writes one JSON object a line: ``timestamp`` (UTC, ISO 8601),
``level``, ``logger``, ``message``, ``role`` (the process's part: api, projections,
relay, notifications, analytics, cli), ``pid``, and, when a record carries them,
``trace_id``, ``span_id``, ``correlation_id`` and ``causation_id`` (from the record's
extras, ``log.info(..., extra={"correlation_id": ...})``, or from the context hooks that
tracing installs with ``add_context_hook``), plus ``exc_info`` as text. Anything else
is plain text, as before.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from tododb.infra import tracing

CONTEXT_FIELDS = ("trace_id", "span_id", "correlation_id", "causation_id")
"""Record attributes copied into a JSON line when present (and not None)."""

ContextHook = Callable[[], Mapping[str, Any]]
_context_hooks: list[ContextHook] = []
_role = "cli"


def set_role(role: str) -> None:
    """Name this process's part in every log line (``configure_logging`` does it too)."""
    global _role
    _role = role


def add_context_hook(hook: ContextHook) -> None:
    """Register a callable giving the current context's fields (e.g. the active span's
    ``trace_id`` and ``span_id``): called for every JSON line; its fields fill those the
    record does not carry itself. A hook that raises is ignored for that line."""
    _context_hooks.append(hook)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "role": _role,
            "pid": record.process,
        }
        for hook in _context_hooks:
            try:
                extra = hook()
            except Exception:  # noqa: S112 - a broken hook must not lose the log line
                continue
            for key, value in extra.items():
                if value is not None:
                    line.setdefault(key, value)
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(role: str | None = None) -> None:
    """Configure the root logger once per process; ``role`` names the process in JSON
    lines (kept if already set)."""
    if role is not None:
        set_role(role)
    # Every process that logs is one of the pipeline's: its spans (OTLP when the standard
    # OTEL_* variables say so) and its log lines carry the trace and correlation ids.
    tracing.setup_tracing(_role)
    if tracing.log_context not in _context_hooks:
        add_context_hook(tracing.log_context)
    handler = logging.StreamHandler()
    if os.environ.get("TODO_LOG_FORMAT", "text").strip().lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=log_level(), handlers=[handler])


def log_level() -> str:
    """``TODO_LOG_LEVEL``'s name (``INFO`` by default)."""
    return os.environ.get("TODO_LOG_LEVEL", "INFO").strip().upper()


def access_log_wanted() -> bool:
    """Whether uvicorn writes its access line per request: an INFO line, so not when
    ``TODO_LOG_LEVEL`` is above INFO (formatting it costs ~7% of a request's CPU, and the
    level would drop it anyway). uvicorn's start-up lines stay: they are few."""
    level = logging.getLevelName(log_level())
    return not isinstance(level, int) or level <= logging.INFO


def uvicorn_log_config() -> dict[str, Any] | None:
    """uvicorn's own loggers through the root handler in JSON mode (None: its default)."""
    if os.environ.get("TODO_LOG_FORMAT", "text").strip().lower() != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json"}},
        "loggers": {
            name: {"handlers": ["json"], "level": "INFO", "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
