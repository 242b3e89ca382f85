"""The ``<schema>.rebuilds`` table: one row per rebuild, the only record of its progress.

Every statement on the table lives here, so its columns and meaning change in one place.
Statements that belong inside a caller's connection (the DDL in ``ReadSide.ensure``'s
transaction, the status page's reads) take that connection; the rest open their own.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import psycopg
from psycopg.sql import SQL, Composed, Identifier


class Database(Protocol):
    """Where the table lives; a ``ReadSide`` is one (not imported: it creates the table)."""

    @property
    def schema(self) -> str: ...

    def connect(self) -> AbstractContextManager[psycopg.Connection[dict[str, Any]]]: ...


RebuildRow = dict[str, Any]
"""A row as the admin API shows it: id, (name,) generation, status, position, ..."""

_CREATE = (
    "CREATE TABLE IF NOT EXISTS {}.rebuilds (id uuid PRIMARY KEY, "
    "name text NOT NULL, generation integer NOT NULL, status text NOT NULL, "
    "position bigint NOT NULL DEFAULT 0, head bigint NOT NULL DEFAULT 0, "
    "events_per_second double precision, started_at timestamptz NOT NULL "
    "DEFAULT now(), finished_at timestamptz, error text)"
)
_UPSERT = (
    "INSERT INTO {}.rebuilds (id, name, generation, status) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET generation = EXCLUDED.generation, "
    "status = EXCLUDED.status"
)
_UPDATE = (
    "UPDATE {}.rebuilds SET position = greatest(position, %s), "
    "head = greatest(head, %s), events_per_second = %s, "
    "status = coalesce(%s, status), error = coalesce(%s, error), "
    "finished_at = CASE WHEN %s::text IS NULL THEN NULL ELSE now() END "
    "WHERE id = %s"
)
_MAX_GENERATION = "SELECT coalesce(max(generation), 0) AS g FROM {}.rebuilds WHERE name = %s"
_LATEST = (
    "SELECT id::text, generation, status, position, head, events_per_second, "
    "started_at, finished_at, error FROM {}.rebuilds WHERE name = %s "
    "ORDER BY started_at DESC LIMIT 1"
)
_GET = (
    "SELECT id::text, name, generation, status, position, head, events_per_second, "
    "started_at, finished_at, error FROM {}.rebuilds "
    "WHERE name = %s AND id::text = %s"
)


@dataclass(frozen=True)
class RebuildLog:
    """Rebuilds of the read models in ``database``'s schema, past and running."""

    database: Database

    def _sql(self, statement: str) -> Composed:
        return SQL(statement).format(Identifier(self.database.schema))

    def create_table(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self._sql(_CREATE))

    def max_generation(self, conn: psycopg.Connection[dict[str, Any]], kind: str) -> int:
        """The highest generation any rebuild of ``kind`` claimed, even one that failed."""
        row = conn.execute(self._sql(_MAX_GENERATION), (kind,)).fetchone()
        return int(row["g"]) if row else 0

    def request(self, rebuild_id: str, kind: str, generation: int) -> None:
        """Register a rebuild that has yet to start (the admin API answers with it)."""
        self._upsert(rebuild_id, kind, generation, "pending")

    def start(self, rebuild_id: str, kind: str, generation: int) -> None:
        """Mark a rebuild running; a requested one keeps its row and start time."""
        self._upsert(rebuild_id, kind, generation, "running")

    def progress(
        self, rebuild_id: str, position: int, head: int, events: int, seconds: float
    ) -> None:
        self._update(rebuild_id, position, head, events, seconds)

    def finish(
        self, rebuild_id: str, position: int, head: int, events: int, seconds: float
    ) -> None:
        self._update(rebuild_id, position, head, events, seconds, status="completed")

    def fail(self, rebuild_id: str, events: int, seconds: float, error: str) -> None:
        """Record the failure; position and head stay where the last progress left them."""
        self._update(rebuild_id, 0, 0, events, seconds, status="failed", error=error)

    def latest(self, conn: psycopg.Connection[dict[str, Any]], kind: str) -> RebuildRow | None:
        """The most recently started rebuild of ``kind`` (without its name), for status."""
        row = conn.execute(self._sql(_LATEST), (kind,)).fetchone()
        return dict(row) if row else None

    def get(self, kind: str, rebuild_id: str) -> RebuildRow | None:
        with self.database.connect() as conn:
            row = conn.execute(self._sql(_GET), (kind, rebuild_id)).fetchone()
        return dict(row) if row else None

    def _upsert(
        self, rebuild_id: str, kind: str, generation: int, status: Literal["pending", "running"]
    ) -> None:
        with self.database.connect() as conn:
            conn.execute(self._sql(_UPSERT), (rebuild_id, kind, generation, status))

    def _update(
        self,
        rebuild_id: str,
        position: int,
        head: int,
        events: int,
        seconds: float,
        *,
        status: Literal["completed", "failed"] | None = None,
        error: str | None = None,
    ) -> None:
        rate = events / seconds if seconds else None
        with self.database.connect() as conn:
            conn.execute(
                self._sql(_UPDATE), (position, head, rate, status, error, status, rebuild_id)
            )
