"""The relay's position and lag, read straight from PostgreSQL (CLI and admin API)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier

from tododb.leadership import lock_key
from tododb.settings import Settings

APPLICATION_NAME = "todos"
TRACKING_TABLE = "relay_tracking"
EVENTS_TABLE = "todos_events"


def _lock_ids(name: str) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as two unsigned 32-bit halves."""
    unsigned = lock_key(f"tododb:{name}") & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


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
        classid, objid = _lock_ids("relay")
        found = cur.execute(
            "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
            (classid, objid),
        ).fetchone()
        active = int((found or {}).get("n") or 0) > 0
    return {"position": position, "head": head, "lag": max(0, head - position), "active": active}


def relay_status(settings: Settings, database_url: str) -> dict[str, Any]:
    with psycopg.connect(database_url, connect_timeout=settings.db_connect_timeout) as conn:
        return read_status(conn, settings.db_schema)
