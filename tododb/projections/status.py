"""Figures for `todo projections status` and the admin API."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg.sql import SQL, Identifier

from tododb.application import TodoApplication
from tododb.infra.leadership import lock_holder, lock_holders
from tododb.infra.loglag import log_lag
from tododb.projections.projection import generation_name
from tododb.projections.quarantine import SUFFIX, quarantined_count
from tododb.projections.rebuild_log import RebuildLog, RebuildRow
from tododb.projections.registry import KINDS, ReadSide, read_position


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    generation: int
    position: int
    head: int
    lag: int
    state: str
    """running (a worker holds it), rebuilding, or stopped (no worker)."""
    last_rebuild: dict[str, Any] | None
    quarantined: int = 0
    """Todos whose events are quarantined in the live generation (see ``quarantine``)."""
    lag_seconds: float = 0.0
    """Age of the oldest event it has not applied yet (0 when caught up)."""
    active_process: str | None = None
    """``host:pid`` of the process holding its lock (running it), if any."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


EVENTS_TABLE = f"{TodoApplication.name}_events"


def events_schema(read_side: ReadSide) -> str:
    """The schema of the event store's tables (the log the projections follow)."""
    return read_side.env.get("POSTGRES_SCHEMA", "public")


def projection_status(
    read_side: ReadSide, head: int, kinds: tuple[str, ...] = KINDS
) -> list[ProjectionStatus]:
    rebuilds = RebuildLog(read_side)
    with read_side.connect() as conn:
        return [_status(conn, read_side, rebuilds, kind, head) for kind in kinds]


def _status(
    conn: psycopg.Connection[dict[str, Any]],
    read_side: ReadSide,
    rebuilds: RebuildLog,
    kind: str,
    head: int,
) -> ProjectionStatus:
    generation = conn.execute(
        SQL("SELECT generation FROM {}.projections WHERE name = %s").format(
            Identifier(read_side.schema)
        ),
        (kind,),
    ).fetchone()
    last_rebuild = rebuilds.latest(conn, kind)
    position = read_position(conn, read_side.schema, kind)
    number = int(generation["generation"]) if generation else 0
    lag = log_lag(conn, events_schema(read_side), EVENTS_TABLE, position, head)
    holder = lock_holder(conn, f"projection:{kind}")
    return ProjectionStatus(
        name=kind,
        generation=number,
        position=position,
        head=head,
        lag=lag.events,
        state=_state(conn, kind, last_rebuild),
        last_rebuild=last_rebuild,
        quarantined=quarantined_count(conn, read_side.schema, quarantine_table(kind, number)),
        lag_seconds=round(lag.seconds, 3),
        active_process=holder.process if holder else None,
    )


def quarantine_table(kind: str, generation: int) -> str:
    """The quarantine table of one generation of ``kind`` (``todos_g3_quarantine``)."""
    return generation_name(kind, generation) + SUFFIX


def quarantined_counts(read_side: ReadSide) -> dict[str, int]:
    """Quarantined todos per projection, in its live generation: a gauge's figures."""
    with read_side.connect() as conn:
        return {
            kind: quarantined_count(conn, read_side.schema, quarantine_table(kind, generation))
            for kind, generation in _generations(conn, read_side).items()
        }


def _generations(conn: psycopg.Connection[dict[str, Any]], read_side: ReadSide) -> dict[str, int]:
    rows = conn.execute(
        SQL("SELECT name, generation FROM {}.projections").format(Identifier(read_side.schema))
    ).fetchall()
    live = {r["name"]: int(r["generation"]) for r in rows}
    return {kind: live[kind] for kind in KINDS if kind in live}


def _state(conn: psycopg.Connection[Any], kind: str, last_rebuild: RebuildRow | None) -> str:
    """Rebuilding needs both an unfinished row and a live lock: a crashed rebuild holds none."""
    if (
        last_rebuild
        and last_rebuild["status"] in ("pending", "running")
        and lock_holders(conn, f"rebuild:{kind}")
    ):
        return "rebuilding"
    if lock_holders(conn, f"projection:{kind}"):
        return "running"
    return "stopped"
