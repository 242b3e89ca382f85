"""The PostgreSQL event store: the library's recorder, made append-only in the database.

The guard lives in PostgreSQL, not in Python, so no client (a bug, a console session,
another service) can rewrite history: UPDATE, DELETE and TRUNCATE on the events table
raise an error.

``TodoPostgresFactory`` is the library's infrastructure factory (chosen by the env's
``PERSISTENCE_MODULE``) with two bounds the library leaves open: a database that cannot
be reached is reported after one pool wait (``POSTGRES_CONNECT_TIMEOUT``) instead of ten
retried ones, and a pool whose connections died reconnects on demand instead of after a
backoff that grows with the outage.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification, PersistenceError, StoredEvent
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
)
from eventsourcing.utils import Environment
from psycopg import Connection
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier
from psycopg_pool import PoolTimeout

from tododb.infra.postgres import RECONNECT_SECONDS, DatabaseUnavailable


class BoundedDatastore(PostgresDatastore):
    """The library's datastore, with a pool timeout reported as ``DatabaseUnavailable``."""

    @contextmanager
    def get_connection(self) -> Iterator[Connection[DictRow]]:
        try:
            with super().get_connection() as conn:
                yield conn
        except PersistenceError as e:
            if isinstance(e.__cause__, PoolTimeout):
                raise DatabaseUnavailable(str(e)) from e
            raise


class TodoPostgresFactory(PostgresFactory):
    """``PERSISTENCE_MODULE=tododb.eventstore:TodoPostgresFactory``: every recorder of
    tododb (the event store, the read models, the relay's tracking) gets bounded waits."""

    application_recorder_class: type[PostgresApplicationRecorder]

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        # The library builds its own datastore; the subclass only narrows how a pool
        # timeout is reported (no state of its own), so re-typing the instance is safe.
        self.datastore.__class__ = BoundedDatastore
        self.datastore.pool.reconnect_timeout = RECONNECT_SECONDS


class AppendOnlyApplicationRecorder(PostgresApplicationRecorder):
    """``PostgresApplicationRecorder`` plus triggers that reject changes to history."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema = Identifier(self.datastore.schema)
        table = Identifier(self.events_table_name)
        function = Identifier(f"{self.events_table_name}_reject_change")
        self.sql_create_statements.extend(
            [
                SQL(
                    "CREATE OR REPLACE FUNCTION {schema}.{function}() RETURNS trigger "
                    "LANGUAGE plpgsql AS $$ BEGIN "
                    "RAISE EXCEPTION 'the event store is append-only: % on % rejected', "
                    "TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege'; "
                    "END $$"
                ).format(schema=schema, function=function),
                SQL(
                    "CREATE OR REPLACE TRIGGER {trigger} BEFORE UPDATE OR DELETE ON "
                    "{schema}.{table} FOR EACH ROW EXECUTE FUNCTION {schema}.{function}()"
                ).format(
                    trigger=Identifier(f"{self.events_table_name}_append_only"),
                    schema=schema,
                    table=table,
                    function=function,
                ),
                SQL(
                    "CREATE OR REPLACE TRIGGER {trigger} BEFORE TRUNCATE ON "
                    "{schema}.{table} FOR EACH STATEMENT EXECUTE FUNCTION {schema}.{function}()"
                ).format(
                    trigger=Identifier(f"{self.events_table_name}_no_truncate"),
                    schema=schema,
                    table=table,
                    function=function,
                ),
            ]
        )

    def _create_table(self, curs: Any) -> None:
        # Serialise schema set-up: several processes may start at once, and concurrent
        # CREATE OR REPLACE FUNCTION on one function fails with "tuple concurrently updated".
        curs.execute(SQL("SELECT pg_advisory_xact_lock(hashtext('tododb.eventstore.ddl'))"))
        super()._create_table(curs)

    def select_partition(
        self, after: int, until: int, partitions: int, partition: int, limit: int
    ) -> list[Notification]:
        """Notifications in (after, until] of the todos whose id falls in ``partition``.

        Lets several processes replay the log in parallel, each reading only its share.
        """
        statement = SQL(
            "SELECT * FROM {schema}.{table} WHERE notification_id > %s AND notification_id <= %s "
            "AND get_byte(uuid_send(originator_id), 15) %% %s = %s "
            "ORDER BY notification_id LIMIT %s"
        ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, (after, until, partitions, partition, limit), prepare=True)
            return [
                Notification(
                    id=row["notification_id"],
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]

    def last_position(self, originator_id: Any) -> int | None:
        """Global log position of the aggregate's latest event."""
        statement = SQL(
            "SELECT notification_id FROM {schema}.{table} WHERE originator_id = %s "
            "ORDER BY originator_version DESC LIMIT 1"
        ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, (originator_id,))
            row = curs.fetchone()
        return None if row is None else int(row["notification_id"])

    def positions(self, originator_id: Any) -> dict[int, int]:
        """Version → global log position, for listing a todo's events."""
        statement = SQL(
            "SELECT originator_version, notification_id FROM {schema}.{table} "
            "WHERE originator_id = %s"
        ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, (originator_id,))
            return {int(r["originator_version"]): int(r["notification_id"]) for r in curs}

    def first_events(self, originator_ids: Sequence[UUID]) -> list[StoredEvent]:
        """The first stored event (version 1) of each aggregate, in one query."""
        statement = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE originator_id = ANY(%s) AND originator_version = 1"
        ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, (list(originator_ids),), prepare=True)
            return [
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]


TodoPostgresFactory.application_recorder_class = AppendOnlyApplicationRecorder
