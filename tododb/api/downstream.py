"""The API's access to the consumers' tables (notifications, analytics, relay status).

They live in the same PostgreSQL database as the event store, in the consumers' own
schemas; the API borrows the event store's connection pool and creates the schemas on
first use (``IF NOT EXISTS``), so it works whether or not a consumer has started yet.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from fastapi import Request

from tododb.consumers import analytics, notifications
from tododb.consumers.ddl import apply_ddl

_ensure_lock = threading.Lock()


@contextmanager
def downstream_connection(request: Request) -> Iterator[psycopg.Connection[Any]]:
    """A pooled autocommit connection (rows as dicts), the consumer schemas in place."""
    state = request.app.state
    datastore = state.todo_app.recorder.datastore
    with datastore.get_connection() as conn:
        if not getattr(state, "downstream_ready", False):
            with _ensure_lock:
                if not getattr(state, "downstream_ready", False):
                    apply_ddl(conn, notifications.SCHEMA, notifications.DDL)
                    apply_ddl(conn, analytics.SCHEMA, analytics.DDL)
                    state.downstream_ready = True
        yield conn
