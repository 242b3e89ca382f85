"""Which generation of each read model is live, and the atomic swap between them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment
from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier, Literal

from tododb.application import TodoApplication
from tododb.projections.projection import generation_name
from tododb.projections.rebuild_log import RebuildLog
from tododb.projections.rows import TodoRow
from tododb.projections.views import (
    APPLICATION_NAME,
    DDL_LOCK,
    NOTIFY_CHANNEL,
    VIEW_CLASSES,
    TodoRowsView,
)

KINDS = tuple(VIEW_CLASSES)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadSide:
    """Where the read models live: a database URL, the library env, and a schema."""

    database_url: str
    env: dict[str, str]
    schema: str = "readmodels"

    def view_env(self, kind: str, generation: int) -> Environment:
        name = generation_name(kind, generation)
        env = dict(self.env)
        env[f"{name.upper()}_POSTGRES_SCHEMA"] = self.schema
        env[f"{name.upper()}_POSTGRES_POOL_SIZE"] = "2"
        env[f"{name.upper()}_POSTGRES_MAX_OVERFLOW"] = "2"
        return Environment(name, env)

    def runner_env(self, kind: str, generation: int) -> dict[str, str]:
        """Env for a ProjectionRunner: the app's settings plus the view's schema."""
        env = dict(self.view_env(kind, generation))
        env["POSTGRES_POOL_SIZE"] = "2"
        return env

    def application(self, pool_size: int = 2) -> TodoApplication:
        """The application whose log the projections follow, with a small pool of its own."""
        size = str(pool_size)
        return TodoApplication(
            env={**self.env, "POSTGRES_POOL_SIZE": size, "POSTGRES_MAX_OVERFLOW": size}
        )

    def open_view(self, kind: str, generation: int) -> TodoRowsView:
        """Construct (and create the tables of) one generation of a view."""
        factory = InfrastructureFactory.construct(env=self.view_env(kind, generation))
        view = factory.tracking_recorder(VIEW_CLASSES[kind])
        assert isinstance(view, TodoRowsView)
        return view

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with psycopg.connect(self.database_url, row_factory=dict_row, autocommit=True) as conn:
            yield conn

    # ---- registry ------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the schema, the registry and generation 1 of every view, once."""
        with self.connect() as conn, conn.transaction():
            conn.execute(DDL_LOCK)
            conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(self.schema)))
            conn.execute(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {}.projections (name text PRIMARY KEY, "
                    "generation integer NOT NULL, activated_at timestamptz NOT NULL DEFAULT now())"
                ).format(Identifier(self.schema))
            )
            RebuildLog(self).create_table(conn)
            live = {k: self._generation(conn, k) for k in KINDS}
            outdated = [
                k for k, g in live.items() if g is not None and not self._current(conn, k, g)
            ]
        for kind in [k for k, g in live.items() if g is None]:
            self._start_generation(kind, 1)
        for kind in outdated:
            # Tables of an earlier release's shape: the workers could not write them nor
            # the queries read them. A new, empty generation goes live instead, and the
            # projection worker fills it from the start of the log (an admin rebuild
            # would have swapped it in only once full; this runs unattended).
            generation = self.next_generation(kind)
            log.warning(
                "read model %s: generation %s has an old table shape; generation %d replaces "
                "it and is replayed from the start of the log",
                kind,
                live[kind],
                generation,
            )
            self._start_generation(kind, generation)

    def _start_generation(self, kind: str, generation: int) -> None:
        view = self.open_view(kind, generation)
        view.create_indexes()
        view.datastore.close()
        self.activate(kind, generation)

    def _current(
        self, conn: psycopg.Connection[dict[str, Any]], kind: str, generation: int
    ) -> bool:
        """Whether ``generation``'s tables are this release's: every one the stable views
        show exists, and the todo rows have every column."""
        tables = list(VIEW_CLASSES[kind].sql_views_for(generation_name(kind, generation)).values())
        found = conn.execute(
            "SELECT table_name, array_agg(column_name::text) AS columns "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name = ANY(%s) "
            "GROUP BY table_name",
            (self.schema, tables),
        ).fetchall()
        columns = {r["table_name"]: set(r["columns"]) for r in found}
        if set(columns) != set(tables) or not set(TodoRow.COLUMNS) <= columns[tables[0]]:
            return False
        # Members carry the position they joined at (delta sync) since issue 12.
        return all("joined" in columns[t] for t in tables if t.endswith("_members"))

    def _generation(self, conn: psycopg.Connection[dict[str, Any]], kind: str) -> int | None:
        row = conn.execute(
            SQL("SELECT generation FROM {}.projections WHERE name = %s").format(
                Identifier(self.schema)
            ),
            (kind,),
        ).fetchone()
        return None if row is None else int(row["generation"])

    def active_generation(self, kind: str) -> int:
        with self.connect() as conn:
            generation = self._generation(conn, kind)
        if generation is None:
            raise LookupError(f"read model {kind!r} has not been set up")
        return generation

    def next_generation(self, kind: str) -> int:
        """Past both the live generation and any a rebuild claimed (whose tables may remain)."""
        with self.connect() as conn:
            live = self._generation(conn, kind) or 0
            return max(live, RebuildLog(self).max_generation(conn, kind)) + 1

    def activate(self, kind: str, generation: int) -> None:
        """Point the stable SQL views at ``generation``, atomically with the registry."""
        view_class = VIEW_CLASSES[kind]
        view_tables = view_class.sql_views_for(generation_name(kind, generation))
        schema = Identifier(self.schema)
        with self.connect() as conn, conn.transaction():
            conn.execute(DDL_LOCK)  # concurrent CREATE OR REPLACE VIEW races on pg_type
            for retired in view_class.RETIRED_SQL_VIEWS:
                conn.execute(SQL("DROP VIEW IF EXISTS {}.{}").format(schema, Identifier(retired)))
            for view_name, table in view_tables.items():
                # Dropped and made again: a new generation may have other columns than
                # the one the view showed (CREATE OR REPLACE VIEW refuses that).
                name = Identifier(view_name)
                conn.execute(SQL("DROP VIEW IF EXISTS {}.{}").format(schema, name))
                conn.execute(
                    SQL("CREATE VIEW {0}.{1} AS SELECT * FROM {0}.{2}").format(
                        schema, name, Identifier(table)
                    )
                )
            conn.execute(
                SQL(
                    "CREATE OR REPLACE VIEW {0}.{1} AS SELECT notification_id AS position "
                    "FROM {0}.{2} WHERE application_name = {3}"
                ).format(
                    schema,
                    Identifier(f"{kind}_position"),
                    Identifier(f"{generation_name(kind, generation)}_tracking"),
                    Literal(APPLICATION_NAME),
                )
            )
            conn.execute(
                SQL(
                    "INSERT INTO {}.projections (name, generation) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET generation = EXCLUDED.generation, "
                    "activated_at = now()"
                ).format(schema),
                (kind, generation),
            )
            conn.execute(SQL("SELECT pg_notify({}, %s)").format(Literal(NOTIFY_CHANNEL)), (kind,))

    def drop_generations_before(self, kind: str, generation: int) -> list[int]:
        """Drop the tables of generations older than ``generation``."""
        schema_rows = []
        with self.connect() as conn:
            schema_rows = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename ~ %s",
                (self.schema, f"^{kind}_g[0-9]+(_|$)"),
            ).fetchall()
            dropped: set[int] = set()
            for r in schema_rows:
                g = int(r["tablename"].removeprefix(f"{kind}_g").split("_")[0])
                if g < generation:
                    conn.execute(
                        SQL("DROP TABLE IF EXISTS {}.{}").format(
                            Identifier(self.schema), Identifier(r["tablename"])
                        )
                    )
                    dropped.add(g)
        return sorted(dropped)

    def position(self, kind: str) -> int:
        with self.connect() as conn:
            return read_position(conn, self.schema, kind)


def read_position(conn: psycopg.Connection[Any], schema: str, kind: str) -> int:
    row = conn.execute(
        SQL("SELECT max(position) AS p FROM {}.{}").format(
            Identifier(schema), Identifier(f"{kind}_position")
        )
    ).fetchone()
    if row is None:
        return 0
    value = row["p"] if isinstance(row, dict) else row[0]
    return int(value or 0)
