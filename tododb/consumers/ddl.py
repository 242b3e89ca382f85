"""Creating a consumer's own schema, safely when several processes start at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg


def apply_ddl(conn: psycopg.Connection[Any], name: str, statements: Sequence[str]) -> None:
    """Run ``CREATE ... IF NOT EXISTS`` statements in one transaction, serialised.

    Concurrent ``CREATE TABLE IF NOT EXISTS`` can still fail on the catalog's unique
    index, so a transaction-scoped advisory lock makes them take turns.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tododb.ddl.{name}",))
        for statement in statements:
            conn.execute(statement.encode())


def inbox_ddl(schema: str) -> str:
    """The inbox: one row per handled CloudEvent id, written with the handler's effects."""
    return (
        f"CREATE TABLE IF NOT EXISTS {schema}.inbox ("
        "event_id uuid PRIMARY KEY, type text NOT NULL, sequence bigint NOT NULL, "
        "handled_at timestamptz NOT NULL DEFAULT now())"
    )
