"""The relay's position and lag, read straight from PostgreSQL (CLI and admin API)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier

from tododb.application import TodoApplication
from tododb.infra.leadership import lock_holders
from tododb.infra.postgres import ConnectionFactory

APPLICATION_NAME = TodoApplication.name
TRACKING_TABLE = "relay_tracking"
EVENTS_TABLE = f"{APPLICATION_NAME}_events"
LOCK_NAME = "relay"


def read_status(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    """Position, head, lag and whether some relay holds the lock (works before any run)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS has_tracking, "
            "to_regclass(%s) IS NOT NULL AS has_events",
            (f'"{schema}"."{TRACKING_TABLE}"', f'"{schema}"."{EVENTS_TABLE}"'),
        ).fetchone()
        assert row is not None
        position = head = 0
        if row["has_tracking"]:
            found = cur.execute(
                SQL(
                    "SELECT max(notification_id) AS n FROM {}.{} WHERE application_name = %s"
                ).format(Identifier(schema), Identifier(TRACKING_TABLE)),
                (APPLICATION_NAME,),
            ).fetchone()
            position = int((found or {}).get("n") or 0)
        if row["has_events"]:
            found = cur.execute(
                SQL("SELECT max(notification_id) AS n FROM {}.{}").format(
                    Identifier(schema), Identifier(EVENTS_TABLE)
                )
            ).fetchone()
            head = int((found or {}).get("n") or 0)
    active = lock_holders(conn, LOCK_NAME) > 0
    return {"position": position, "head": head, "lag": max(0, head - position), "active": active}


class RelayStatusReader:
    """``read_status`` on a lent connection: what the admin API is handed."""

    def __init__(self, connect: ConnectionFactory, schema: str) -> None:
        self.connect = connect
        self.schema = schema

    def __call__(self) -> dict[str, Any]:
        with self.connect() as conn:
            return read_status(conn, self.schema)


def relay_status(database_url: str, schema: str, *, connect_timeout: int = 5) -> dict[str, Any]:
    """``read_status`` on a connection of its own (the CLI)."""
    with psycopg.connect(database_url, connect_timeout=connect_timeout) as conn:
        return read_status(conn, schema)
