"""Quarantine: one bad event never halts a projection for everyone else.

An event that cannot be decoded or applied is set aside with its error (its todo's
*head*), the later events of the same todo are *held* behind it (a view must never skip
an event, so none of them is applied either), and every other todo flows on while the
tracking position keeps advancing. An admin can retry the todo after a fix, or skip the
head (recorded, not deleted), which applies the held events behind it.

Decoding failures become ``Undecodable`` placeholders where decoding happens: in the
library's subscription, through the mapper the projections' application constructs with
the library's own seam (``construct_mapper``), and in the rebuild, through ``decode``.
Apply failures are found by the view (``TodoRowsView.apply``), which redoes a failed
batch in savepoints of its one transaction. Only the event's own faults quarantine: a
database that cannot be reached (or any other database error) still fails the worker,
which restarts, because quarantining then would set aside good events.

The table (``<generation>_quarantine``) is the truth; each view keeps the quarantined
todo ids in memory (loaded at its first batch) so that holding costs a set lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    Mapper,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.utils import get_topic
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

from tododb.application import TodoApplication
from tododb.eventstore import AppendOnlyApplicationRecorder
from tododb.infra.leadership import lock_key

SUFFIX = "_quarantine"
"""A view generation's quarantine table is its prefix plus this (``todos_g3_quarantine``)."""

QUARANTINED, SKIPPED, RELEASED = "quarantined", "skipped", "released"
"""A row's status: the todo's current head, or history (skipped by an admin, or released)."""

MAX_ERROR = 2000

Pair = tuple[Any, int]
"""An event (or an ``Undecodable``) with its log position."""


class NotQuarantined(LookupError):
    """The todo has never been quarantined by this projection."""


class NothingToResolve(Exception):
    """The todo was quarantined once, but no event of it is quarantined now."""


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a stored event that could not be decoded, so the projection can
    quarantine it with its error instead of its subscription dying on it."""

    originator_id: UUID
    originator_version: int
    topic: str
    error: str


def describe(error: BaseException) -> str:
    """The error as stored: a text column takes neither NUL nor lone surrogates (the
    bad value may be quoted in the message), and a row holds no novel."""
    text = f"{type(error).__name__}: {error}".replace("\x00", "\\x00")[:MAX_ERROR]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def decode(mapper: Mapper[UUID], stored: StoredEvent) -> Any:
    """The domain event, or an ``Undecodable`` saying why there is none."""
    try:
        return mapper.to_domain_event(stored)
    except Exception as e:
        return _undecodable(stored, e)


def _undecodable(stored: StoredEvent, error: Exception) -> Undecodable:
    originator_id = stored.originator_id
    todo_id = originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
    return Undecodable(todo_id, stored.originator_version, stored.topic, describe(error))


class QuarantiningMapper(Mapper[UUID]):
    """The application's mapper, but an event it cannot decode comes out as a placeholder.

    The library's subscription decodes each notification before the projection sees it;
    an exception there would stop the runner on the same event at every restart.
    """

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        try:
            return super().to_domain_event(stored_event)
        except Exception as e:
            return _undecodable(stored_event, e)


class ProjectionApplication(TodoApplication):
    """The application as the projection runners read it: same log, same name (tracking
    rows name it), with the quarantining mapper. Only ever read, never written through."""

    name = TodoApplication.name

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=QuarantiningMapper
        )


def is_event_fault(error: BaseException) -> bool:
    """True if applying failed because of the event itself (bad data, an unknown shape).

    Database errors other than data and integrity errors (unreachable, pool timeouts,
    missing tables, deadlocks) are the infrastructure's: the worker fails and restarts.
    """
    if isinstance(error, psycopg.DataError | psycopg.IntegrityError | DataError | IntegrityError):
        return True
    return not isinstance(error, psycopg.Error | PersistenceError | OSError | MemoryError)


@dataclass
class TodoEvents:
    """One todo's events in a batch, in order, and what becomes of them."""

    todo_id: UUID
    held_behind: bool = False
    """The todo was already quarantined: every event here is held."""
    events: list[Pair] = field(default_factory=list)
    failed_at: int | None = None
    error: str = ""

    def add(self, pair: Pair) -> None:
        self.events.append(pair)
        if isinstance(pair[0], Undecodable) and self.failed_at is None and not self.held_behind:
            self.fail(len(self.events) - 1, pair[0].error)

    def fail(self, index: int, error: str) -> None:
        """The event at ``index`` becomes the head; the ones after it are held."""
        if self.failed_at is None or index < self.failed_at:
            self.failed_at, self.error = index, error

    @property
    def applicable(self) -> list[Pair]:
        """The events to try: those before the head (none if the todo is held)."""
        if self.held_behind:
            return []
        return self.events if self.failed_at is None else self.events[: self.failed_at]

    def head_row(self) -> tuple[Any, ...]:
        """(todo_id, version, position, topic, error, held) of the new head."""
        assert self.failed_at is not None
        event, position = self.events[self.failed_at]
        topic = event.topic if isinstance(event, Undecodable) else get_topic(type(event))
        held = len(self.events) - self.failed_at - 1
        return (self.todo_id, event.originator_version, position, topic, self.error, held)


def split(events: Sequence[Pair], quarantined: set[UUID]) -> list[TodoEvents]:
    """Group a batch by todo (log order kept within each); mark held and undecodable."""
    groups: dict[UUID, TodoEvents] = {}
    for pair in events:
        todo_id = pair[0].originator_id
        group = groups.get(todo_id)
        if group is None:
            group = groups[todo_id] = TodoEvents(todo_id, held_behind=todo_id in quarantined)
        group.add(pair)
    return list(groups.values())


@dataclass(frozen=True)
class QuarantinedTodo:
    """A todo's head: the event that failed, why, and how many are held behind it."""

    todo_id: UUID
    version: int
    position: int
    topic: str
    error: str
    held: int
    quarantined_at: datetime

    @classmethod
    def from_record(cls, record: DictRow) -> QuarantinedTodo:
        return cls(**{name: record[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Resolution:
    """What a retry or skip did: events applied, and the todo's head if it has one again."""

    todo_id: UUID
    applied: int
    quarantined: QuarantinedTodo | None

    @property
    def released(self) -> bool:
        return self.quarantined is None


_COLUMNS = SQL("todo_id, version, position, topic, error, held, quarantined_at")


class QuarantineTable:
    """The statements on one generation's quarantine table, and its in-memory id cache."""

    def __init__(self, schema: str, name: str) -> None:
        self.name = name
        self.table = SQL("{}.{}").format(Identifier(schema), Identifier(name))
        self.lock_key = lock_key(f"tododb:quarantine:{schema}.{name}")
        self.ids: set[UUID] | None = None
        """Quarantined todo ids; None until loaded."""

    def statements(self) -> list[Composed]:
        return [
            SQL(
                "CREATE TABLE IF NOT EXISTS {} (todo_id uuid NOT NULL, version integer NOT NULL, "
                "position bigint NOT NULL, topic text NOT NULL, error text NOT NULL, "
                "held integer NOT NULL DEFAULT 0, status text NOT NULL DEFAULT 'quarantined', "
                "quarantined_at timestamptz NOT NULL DEFAULT now(), resolved_at timestamptz, "
                "PRIMARY KEY (todo_id, version))"
            ).format(self.table),
            SQL(
                "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (todo_id) WHERE status = 'quarantined'"
            ).format(Identifier(f"{self.name}_head"), self.table),
        ]

    def sql(self, text: str) -> Composed:
        return SQL(text).format(table=self.table, columns=_COLUMNS)

    def load(self, curs: Cursor[DictRow]) -> None:
        curs.execute(self.sql("SELECT todo_id FROM {table} WHERE status = 'quarantined'"))
        self.ids = {r["todo_id"] for r in curs.fetchall()}

    def touches(self, events: Iterable[Pair]) -> bool:
        """Whether a batch needs the careful path: the hot path's only quarantine cost."""
        ids = self.ids or set()
        return any(type(e) is Undecodable or e.originator_id in ids for e, _ in events)

    def lock(self, curs: Cursor[DictRow]) -> None:
        """Serialises holding and releasing, so no held event can slip past a release."""
        curs.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))

    def confirm(self, curs: Cursor[DictRow], todo_ids: set[UUID]) -> set[UUID]:
        """Which of the cached ``todo_ids`` are still quarantined (an admin may release)."""
        curs.execute(
            self.sql(
                "SELECT todo_id FROM {table} WHERE status = 'quarantined' AND todo_id = ANY(%s)"
            ),
            (list(todo_ids),),
        )
        still = {r["todo_id"] for r in curs.fetchall()}
        if self.ids is not None:
            self.ids -= todo_ids - still
        return still

    def record(self, curs: Cursor[DictRow], groups: Iterable[TodoEvents]) -> None:
        """New heads (a re-failed head is updated), and more held behind old ones."""
        heads = [g.head_row() for g in groups if g.failed_at is not None and not g.held_behind]
        holds = [(len(g.events), g.todo_id) for g in groups if g.held_behind]
        if heads:
            curs.executemany(
                self.sql(
                    "INSERT INTO {table} (todo_id, version, position, topic, error, held) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (todo_id, version) DO UPDATE "
                    "SET status = 'quarantined', error = EXCLUDED.error, held = EXCLUDED.held, "
                    "resolved_at = NULL"
                ),
                heads,
            )
        if holds:
            curs.executemany(
                self.sql(
                    "UPDATE {table} SET held = held + %s "
                    "WHERE todo_id = %s AND status = 'quarantined'"
                ),
                holds,
            )

    def remember(self, groups: Iterable[TodoEvents]) -> None:
        """Once committed: the new heads' todos hold their later events from now on."""
        if self.ids is not None:
            self.ids |= {g.todo_id for g in groups if g.failed_at is not None}

    def head(self, curs: Cursor[DictRow], todo_id: UUID) -> QuarantinedTodo:
        """The todo's head, locked; NotQuarantined / NothingToResolve if it has none."""
        curs.execute(
            self.sql(
                "SELECT {columns} FROM {table} "
                "WHERE todo_id = %s AND status = 'quarantined' FOR UPDATE"
            ),
            (todo_id,),
        )
        row = curs.fetchone()
        if row is not None:
            return QuarantinedTodo.from_record(row)
        curs.execute(self.sql("SELECT 1 FROM {table} WHERE todo_id = %s LIMIT 1"), (todo_id,))
        if curs.fetchone() is None:
            raise NotQuarantined(f"todo {todo_id} has never been quarantined")
        raise NothingToResolve(f"todo {todo_id} has no quarantined event")

    def close_head(self, curs: Cursor[DictRow], head: QuarantinedTodo, status: str) -> None:
        """The head becomes history: skipped by an admin, or released (it applied)."""
        curs.execute(
            self.sql(
                "UPDATE {table} SET status = %s, resolved_at = now() "
                "WHERE todo_id = %s AND version = %s"
            ),
            (status, head.todo_id, head.version),
        )


def quarantined_todos(
    conn: psycopg.Connection[DictRow], schema: str, name: str
) -> list[QuarantinedTodo]:
    """Every head in the table ``name``, in log order; none if it does not exist yet."""
    if not _exists(conn, schema, name):
        return []
    table = SQL("{}.{}").format(Identifier(schema), Identifier(name))
    rows = conn.execute(
        SQL("SELECT {} FROM {} WHERE status = 'quarantined' ORDER BY position").format(
            _COLUMNS, table
        )
    ).fetchall()
    return [QuarantinedTodo.from_record(r) for r in rows]


def quarantined_count(conn: psycopg.Connection[DictRow], schema: str, name: str) -> int:
    """How many todos the table ``name`` holds quarantined (0 if it does not exist yet)."""
    if not _exists(conn, schema, name):
        return 0
    table = SQL("{}.{}").format(Identifier(schema), Identifier(name))
    row = conn.execute(
        SQL("SELECT count(*) AS n FROM {} WHERE status = 'quarantined'").format(table)
    ).fetchone()
    return int(row["n"]) if row else 0


def _exists(conn: psycopg.Connection[DictRow], schema: str, name: str) -> bool:
    """Generations made before quarantine existed get the table when a worker opens them."""
    row = conn.execute(
        "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL AS e",
        (schema, name),
    ).fetchone()
    return bool(row and row["e"])


def read_todo_events(
    app: TodoApplication, todo_id: UUID, from_version: int, until_position: int
) -> list[Pair]:
    """The todo's events from ``from_version`` on, up to the view's position, decoded
    (or placeholders), in order: what a retry or skip re-reads from the event store."""
    recorder = app.recorder
    assert isinstance(recorder, AppendOnlyApplicationRecorder)
    stored = recorder.select_events(todo_id, gt=from_version - 1)
    positions = recorder.positions(todo_id)
    pairs = []
    for event in stored:
        position = positions.get(event.originator_version)
        if position is not None and position <= until_position:
            pairs.append((decode(app.mapper, event), position))
    return pairs
