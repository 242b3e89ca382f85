"""The relay's position and lag, and what it quarantined, read straight from PostgreSQL
(CLI and admin API)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier

from tododb.application import TodoApplication
from tododb.infra.leadership import lock_holder
from tododb.infra.loglag import log_lag
from tododb.infra.postgres import ConnectionFactory

APPLICATION_NAME = TodoApplication.name
TRACKING_TABLE = "relay_tracking"
EVENTS_TABLE = f"{APPLICATION_NAME}_events"
QUARANTINE_TABLE = "relay_quarantine"
LOCK_NAME = "relay"


def read_status(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    """Position, head, lag (in events and seconds: the age of the oldest event not yet
    published), whether some relay holds the lock and which process, and how many events
    are quarantined (could not be published) and held behind them (works before any run)."""
    with conn.cursor(row_factory=dict_row) as cur:
        position = _scalar(
            cur,
            schema,
            TRACKING_TABLE,
            "SELECT max(notification_id) AS n FROM {} WHERE application_name = %s",
            (APPLICATION_NAME,),
        )
        head = _scalar(cur, schema, EVENTS_TABLE, "SELECT max(notification_id) AS n FROM {}")
        counts = "SELECT count(*) AS n FROM {} WHERE status = %s"
        quarantined = _scalar(cur, schema, QUARANTINE_TABLE, counts, ("quarantined",))
        held = _scalar(cur, schema, QUARANTINE_TABLE, counts, ("held",))
    holder = lock_holder(conn, LOCK_NAME)
    lag = log_lag(conn, schema, EVENTS_TABLE, position, head)
    return {
        "position": position,
        "head": head,
        "lag": lag.events,
        "lag_seconds": round(lag.seconds, 3),
        "active": holder is not None,
        "active_process": holder.process if holder else None,
        "quarantined": quarantined,
        "held": held,
    }


def _scalar(
    cur: psycopg.Cursor[dict[str, Any]],
    schema: str,
    table: str,
    query: str,
    args: tuple[Any, ...] = (),
) -> int:
    """``query``'s one number on ``schema.table`` (``{}``), 0 if the table does not exist."""
    exists = cur.execute("SELECT to_regclass(%s) IS NOT NULL AS e", (f'"{schema}"."{table}"',))
    if not (exists.fetchone() or {}).get("e"):
        return 0
    found = cur.execute(SQL(query).format(Identifier(schema, table)), args).fetchone()
    return int((found or {}).get("n") or 0)


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
