"""The event store's recorder: the library's, append-only in the database, with group commit.

The guard lives in PostgreSQL, not in Python, so no client (a bug, a console session,
another service) can rewrite history: UPDATE, DELETE and TRUNCATE on the events table
raise an error.

Appends go through the process's ``GroupCommitter``: concurrent commands share one
transaction, one append lock and one WAL flush (see ``committer`` and ``writer``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    InterfaceError,
    Notification,
    OperationalError,
    StoredEvent,
    Subscription,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import Connection
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Composed, Identifier

from tododb.eventstore.batches import Limits
from tododb.eventstore.committer import Append, GroupCommitter
from tododb.eventstore.subscription import WakingSubscription
from tododb.eventstore.writer import BatchWriter, append_lock

APPEND_ATTEMPTS = 10
APPEND_RETRY_WAIT = 0.2
"""An append whose connection failed is tried again, as the library tries its inserts."""

DDL_LOCK = SQL("SELECT pg_advisory_xact_lock(hashtext('tododb.eventstore.ddl'))")


class AppendOnlyApplicationRecorder(PostgresApplicationRecorder):
    """``PostgresApplicationRecorder`` plus triggers that reject changes to history, and
    appends written by the process's group committer."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self._selects: dict[tuple[bool, bool, bool, bool], bytes] = {}
        """``select_events``' statements, rendered once per shape of its arguments."""
        self.sql_create_statements.extend(self._append_only_statements())
        self.writer = BatchWriter(
            self.datastore.schema,
            self.events_table_name,
            self.channel_name,
            self.datastore.lock_timeout,
        )
        self.sql_create_statements.extend(self.writer.statements)
        # The library's own path (appends with a tracking record) takes the same append
        # lock as the batch writer, in place of its EXCLUSIVE table lock (see ``writer``).
        self.lock_table_statements = [
            SQL("SET LOCAL lock_timeout = '{}s'").format(self.datastore.lock_timeout),
            SQL("SELECT {}").format(append_lock(self.datastore.schema, self.events_table_name)),
        ]
        self.committer: GroupCommitter[Connection[DictRow]] = GroupCommitter(
            self.datastore.get_connection,
            self.writer.write,
            Limits(),
            queue_timeout=self.datastore.pool.timeout,
        )

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """The library's subscription, minus its lost wake-up (see ``subscription``)."""
        return WakingSubscription(recorder=self, gt=gt, topics=topics)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Store one command's events (all or none) through group commit; their positions.

        Calls with ``tracking`` (a process application's) keep the library's own path, as
        do datastores the committer was not written for (database functions, text ids).
        """
        if kwargs.get("tracking") is not None or not self.groups_commits:
            ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
            return ids
        if not stored_events:
            return []
        positions: list[int] = self._append(stored_events)
        return positions

    async def append_async(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        """``insert_events`` for a coroutine (no tracking record): one command's events
        through group commit, awaited on the event loop; retried as ``_append`` is.

        Only where the committer writes (``groups_commits``); elsewhere a ``TypeError``.
        """
        if not self.groups_commits:
            raise TypeError("this event store's appends do not go through group commit")
        attempts = 1
        while True:
            try:
                return await self.committer.append_async(stored_events)
            except (InterfaceError, OperationalError):
                if attempts >= APPEND_ATTEMPTS:
                    raise
            attempts += 1
            await asyncio.sleep(APPEND_RETRY_WAIT * random.uniform(0.95, 1.05))  # noqa: S311

    def close(self) -> None:
        """Stop the committer's thread (the pool is the datastore's to close)."""
        self.committer.close()

    def write_figures(self) -> dict[str, float]:
        """The group committer's figures (``GroupCommitter.figures``), for metrics."""
        return self.committer.figures()

    @property
    def groups_commits(self) -> bool:
        """The batch writer's functions take uuid ids and replace the library's own
        database functions; other set-ups keep the library's path."""
        datastore = self.datastore
        return datastore.originator_id_type == "uuid" and not datastore.enable_db_functions

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """The library's query (and retries), its text rendered once per shape: the
        library composes and renders it on every call, a third of a load's CPU."""
        shape = (gt is not None, lte is not None, desc, limit is not None)
        statement = self._selects.get(shape)
        if statement is None:
            statement = self._selects[shape] = self._select_text(*shape)
        params = [originator_id, *(p for p in (gt, lte, limit) if p is not None)]
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(statement, params, prepare=True)
            return [
                StoredEvent(
                    originator_id=row[0],
                    originator_version=row[1],
                    topic=row[2],
                    state=bytes(row[3]),
                )
                for row in curs.fetchall()
            ]

    def _select_text(self, gt: bool, lte: bool, desc: bool, limit: bool) -> bytes:
        return (
            SQL(
                "SELECT originator_id, originator_version, topic, state FROM {}.{} "
                "WHERE originator_id = %s{}{} ORDER BY originator_version {}{}"
            )
            .format(
                Identifier(self.datastore.schema),
                Identifier(self.events_table_name),
                SQL(" AND originator_version > %s" if gt else ""),
                SQL(" AND originator_version <= %s" if lte else ""),
                SQL("DESC" if desc else "ASC"),
                SQL(" LIMIT %s" if limit else ""),
            )
            .as_bytes()
        )

    @retry((InterfaceError, OperationalError), max_attempts=APPEND_ATTEMPTS, wait=APPEND_RETRY_WAIT)
    def _append(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        """Retried like the library's ``insert_events``: a batch whose connection dropped
        (maybe around COMMIT) is submitted again, and meets its own rows if it committed."""
        return self.committer.append(stored_events)

    def write_batch(self, commands: Sequence[Sequence[StoredEvent]]) -> list[Append]:
        """Write ``commands`` as one batch, as the committer writes what it collects (for
        tests and tools); each ``Append`` carries its own outcome (``outcome()``)."""
        items = [Append(events) for events in commands]
        self.committer.write_together(items)
        return items

    def _append_only_statements(self) -> list[Composed]:
        """A trigger function raising on UPDATE, DELETE and TRUNCATE, and its triggers."""
        table = self.events_table_name
        names = {
            "schema": Identifier(self.datastore.schema),
            "table": Identifier(table),
            "function": Identifier(f"{table}_reject_change"),
        }
        trigger = (
            "CREATE OR REPLACE TRIGGER {trigger} BEFORE {events} ON {schema}.{table} "
            "FOR EACH {each} EXECUTE FUNCTION {schema}.{function}()"
        )
        return [
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{function}() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'the event store is append-only: % on % rejected', "
                "TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege'; "
                "END $$"
            ).format(**names),
            SQL(trigger).format(
                trigger=Identifier(f"{table}_append_only"),
                events=SQL("UPDATE OR DELETE"),
                each=SQL("ROW"),
                **names,
            ),
            SQL(trigger).format(
                trigger=Identifier(f"{table}_no_truncate"),
                events=SQL("TRUNCATE"),
                each=SQL("STATEMENT"),
                **names,
            ),
        ]

    def create_table(self) -> None:
        """Schema set-up that processes starting at once on an empty database take turns at.

        The library creates the stored-event type in a transaction of its own and counts on
        DuplicateObject if it exists; but a CREATE TYPE racing another of the same name fails
        with a unique violation instead (it once killed the API as `todo dev` started). Here
        the type, the table, its functions and triggers are made in one transaction under one
        lock: concurrent CREATE OR REPLACE FUNCTION fails too ("tuple concurrently updated").
        """
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(DDL_LOCK)
            # pg_type read with this statement's snapshot: to_regtype() would consult a
            # catalog cache that the advisory lock does not refresh, and miss the type.
            curs.execute(
                SQL(
                    "SELECT NOT EXISTS (SELECT FROM pg_type t JOIN pg_namespace n "
                    "ON n.oid = t.typnamespace WHERE n.nspname = %s AND t.typname = %s) AS missing"
                ),
                (self.datastore.schema, self.stored_event_type_name),
            )
            row = curs.fetchone()
            for statement in self.sql_create_statements:
                is_type = "CREATE TYPE" in statement.as_string()
                if not is_type or (row and row["missing"]):
                    curs.execute(statement, prepare=False)
        self.datastore.register_type_adapters()

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
            return [_notification(row) for row in curs.fetchall()]

    def select_positions(self, positions: Sequence[int]) -> list[Notification]:
        """The stored events at ``positions``, in log order (the relay re-encodes
        quarantined ones through this, not with SQL of its own on the events table)."""
        statement = SQL(
            "SELECT * FROM {schema}.{table} WHERE notification_id = ANY(%s) "
            "ORDER BY notification_id"
        ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name))
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, (list(positions),))
            return [_notification(row) for row in curs.fetchall()]

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


def _notification(row: dict[str, Any]) -> Notification:
    return Notification(
        id=row["notification_id"],
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )
