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


def parked_ddl(schema: str) -> tuple[str, ...]:
    """Parked messages (see ``consumers.parking``): a key's dead-lettered message and
    every later message of that key, in order (``id``), until retried or skipped.

    Applied by the consumer core with the handler's own DDL, so every consumer has it.
    A redelivered copy is recognised by topic, partition, offset and its bytes (offsets
    alone repeat after a broker that lost its log restarts).
    """
    return (
        f"CREATE TABLE IF NOT EXISTS {schema}.parked ("
        "id bigserial PRIMARY KEY, group_id text NOT NULL, key text NOT NULL, "
        'topic text NOT NULL, partition integer NOT NULL, "offset" bigint NOT NULL, '
        "value bytea, headers jsonb NOT NULL DEFAULT '[]', event_id text, "
        "error text, attempts integer NOT NULL DEFAULT 0, "
        "status text NOT NULL DEFAULT 'parked' "
        "CHECK (status IN ('parked', 'handled', 'skipped')), "
        "parked_at timestamptz NOT NULL DEFAULT now(), resolved_at timestamptz)",
        f"CREATE INDEX IF NOT EXISTS parked_waiting ON {schema}.parked (group_id, key, id) "
        "WHERE status = 'parked'",
        f"CREATE UNIQUE INDEX IF NOT EXISTS parked_copy ON {schema}.parked "
        '(group_id, topic, partition, "offset", md5(value))',
    )
