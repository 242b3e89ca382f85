"""Figures for `todo projections status` and the admin API."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from psycopg.sql import SQL, Identifier

from tododb.leadership import lock_holders
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def projection_status(read_side: ReadSide, head: int) -> list[ProjectionStatus]:
    schema = Identifier(read_side.schema)
    result = []
    with read_side.connect() as conn:
        for kind in KINDS:
            generation = conn.execute(
                SQL("SELECT generation FROM {}.projections WHERE name = %s").format(schema), (kind,)
            ).fetchone()
            rebuild = conn.execute(
                SQL(
                    "SELECT id::text, generation, status, position, head, events_per_second, "
                    "started_at, finished_at, error FROM {}.rebuilds WHERE name = %s "
                    "ORDER BY started_at DESC LIMIT 1"
                ).format(schema),
                (kind,),
            ).fetchone()
            position = read_position(conn, read_side.schema, kind)
            if (
                rebuild
                and rebuild["status"] in ("pending", "running")
                and lock_holders(conn, f"rebuild:{kind}")
            ):
                state = "rebuilding"
            elif lock_holders(conn, f"projection:{kind}"):
                state = "running"
            else:
                state = "stopped"
            result.append(
                ProjectionStatus(
                    name=kind,
                    generation=int(generation["generation"]) if generation else 0,
                    position=position,
                    head=head,
                    lag=max(head - position, 0),
                    state=state,
                    last_rebuild=dict(rebuild) if rebuild else None,
                )
            )
    return result
