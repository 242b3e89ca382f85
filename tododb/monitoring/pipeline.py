"""The whole pipeline at a glance: `todo status` and ``GET /v1/admin/status``.

For each part, where it is, how far behind (events and seconds), its state, and the
process doing the work: the API; each projection and the relay (read from PostgreSQL:
their positions, the log's head, the age of the first event they have not processed,
and the holder of their advisory lock, from ``pg_locks`` and ``pg_stat_activity``);
each consumer group (read from the broker: committed and end offsets, the oldest
unconsumed message, the group's members, its dead-letter depth; parked keys from
PostgreSQL).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

from tododb.consumers.lag import read_groups
from tododb.infra.loglag import log_head
from tododb.infra.settings import Settings
from tododb.projections.registry import ReadSide
from tododb.projections.status import EVENTS_TABLE, events_schema, projection_status
from tododb.relay.status import read_status

CONSUMER_GROUPS = ("notifications", "analytics")
"""The consumers' default groups (each is also its consumer's schema)."""


def pipeline_status(
    settings: Settings,
    read_side: ReadSide,
    *,
    api: dict[str, Any],
    groups: Sequence[str] = CONSUMER_GROUPS,
    kafka_timeout: float = 3.0,
) -> dict[str, Any]:
    """Every part's figures, as plain JSON-able values (``api``: what to say of the API)."""
    with read_side.connect() as conn:
        head = log_head(conn, events_schema(read_side), EVENTS_TABLE)
        relay = read_status(conn, settings.db_schema)
        parked = {g: _parked(conn, g) for g in groups}
    projections = [
        {
            "name": s.name,
            "generation": s.generation,
            "position": s.position,
            "lag": s.lag,
            "lag_seconds": s.lag_seconds,
            "state": s.state,
            "active_process": s.active_process,
            "quarantined": s.quarantined,
        }
        for s in projection_status(read_side, head)
    ]
    lags = asyncio.run(read_groups(settings, list(groups), timeout=kafka_timeout))
    consumers = [
        {
            "group": lag.group,
            "topic": lag.topic,
            "position": lag.committed,
            "end": lag.end,
            "lag": lag.lag,
            "lag_seconds": None if lag.lag_seconds is None else round(lag.lag_seconds, 3),
            "state": _group_state(lag.state, lag.members, lag.error),
            "members": lag.members,
            "dlq_depth": lag.dlq_depth,
            "parked": parked[lag.group],
            "error": lag.error,
        }
        for lag in lags
    ]
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "head": head,
        "api": api,
        "projections": projections,
        "relay": {
            "position": relay["position"],
            "lag": relay["lag"],
            "lag_seconds": relay["lag_seconds"],
            "state": "running" if relay["active"] else "stopped",
            "active_process": relay["active_process"],
            "quarantined": relay["quarantined"],
            "held": relay["held"],
        },
        "consumers": consumers,
    }


def _group_state(state: str, members: list[str], error: str | None) -> str:
    """running (members consuming), stopped (no member), or unknown (broker away)."""
    if error is not None:
        return "unknown"
    if members:
        return "running"
    if state in ("Empty", "Dead"):
        return "stopped"
    return "unknown" if state == "unknown" else state.lower()


def _parked(conn: psycopg.Connection[Any], group: str) -> int:
    """Keys parked in ``group`` (its consumer's table; 0 before the consumer first ran)."""
    found = conn.execute("SELECT to_regclass(%s) AS t", (f'"{group}"."parked"',)).fetchone()
    if not found or (found["t"] if isinstance(found, dict) else found[0]) is None:
        return 0
    row = conn.execute(
        SQL(
            "SELECT count(DISTINCT key) AS n FROM {} WHERE group_id = %s AND status = 'parked'"
        ).format(Identifier(group, "parked")),
        (group,),
    ).fetchone()
    if row is None:
        return 0
    return int(row["n"] if isinstance(row, dict) else row[0])


def this_api() -> dict[str, Any]:
    """The API's own entry, when it answers for itself."""
    return {"state": "ready", "process": f"{socket.gethostname()}:{os.getpid()}", "url": None}
