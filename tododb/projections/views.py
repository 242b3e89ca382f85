"""Read models as tracking recorders: each update commits with its log position.

A view is one *generation* of tables (``todos_g3``, ``todos_g3_lists``,
``todos_g3_members``, ``todos_g3_tracking``, and ``todos_g3_quarantine`` for the events it
could not apply; see ``quarantine``). Queries read stable SQL views (``readmodels.todos``,
``readmodels.lists``, ...) that point at the active generation, so a rebuild can fill a
new generation while the old one keeps serving, then swap.

Both kinds fold todos *and* lists (with their members): whoever may see a todo is decided
by its list's members as of the same position, in the same transaction. No row is ever
written from another aggregate's event, so a partitioned rebuild (by aggregate id) and
per-aggregate quarantine stay valid; a todo of a deleted list is hidden by the queries'
join, not by rewriting the todo.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier, Literal

from tododb.application import TodoApplication
from tododb.domain import TodoList
from tododb.projections.history import History, walk_history
from tododb.projections.quarantine import (
    RELEASED,
    SKIPPED,
    SUFFIX,
    Pair,
    QuarantinedTodo,
    QuarantineTable,
    Resolution,
    TodoEvents,
    describe,
    is_event_fault,
    quarantined_todos,
    split,
)
from tododb.projections.rows import ListRow, Row, TodoRow, aggregate_class, fold_events

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tododb_views"
COPY_FROM_ROWS = 64
SET_ASYNC_COMMIT = b"SET LOCAL synchronous_commit TO OFF"
APPLICATION_NAME = TodoApplication.name
"""The application whose log the views follow (tracking rows name it)."""

ReadEvents = Callable[[UUID, int, int], list[Pair]]
"""(todo id, from version, until position) → the todo's events, decoded, in order."""

_ROW_DDL = (
    "id uuid PRIMARY KEY, owner text NOT NULL, list_id uuid NOT NULL, title text NOT NULL, "
    "description text NOT NULL, due timestamptz, priority text NOT NULL, "
    "tags text[] NOT NULL, status text NOT NULL, "
    # Order keys compare byte-wise (tododb.domain.ordering), whatever the database's locale.
    'order_key text COLLATE "C" NOT NULL, assignee text, recurrence text, '
    "recurrence_anchor timestamptz, remind_at timestamptz, steps jsonb NOT NULL, "
    "completions integer NOT NULL, "
    "created_at timestamptz NOT NULL, "
    "updated_at timestamptz NOT NULL, completed_at timestamptz, version integer NOT NULL, "
    "deleted boolean NOT NULL, position bigint NOT NULL"
)
_LIST_DDL = (
    "id uuid PRIMARY KEY, name text NOT NULL, owner text NOT NULL, inbox boolean NOT NULL, "
    "deleted boolean NOT NULL, version integer NOT NULL, position bigint NOT NULL, "
    "created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL"
)
_MEMBER_DDL = (
    "list_id uuid NOT NULL, user_id text NOT NULL, role text NOT NULL, "
    # The position of the event that made the user a member (this time round): a client
    # that synced before it has seen none of the list's todos (tododb.projections.changes).
    "joined bigint NOT NULL, PRIMARY KEY (list_id, user_id)"
)
_DEPARTURE_DDL = (
    # The last time the user stopped being a member (removed, or left): position.
    "list_id uuid NOT NULL, user_id text NOT NULL, position bigint NOT NULL, "
    "PRIMARY KEY (list_id, user_id)"
)
_MOVE_DDL = (
    # The last time a todo left a list (moved elsewhere): position.
    "from_list uuid NOT NULL, todo_id uuid NOT NULL, position bigint NOT NULL, "
    "PRIMARY KEY (from_list, todo_id)"
)


DDL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tododb.readmodels.ddl'))"
"""Taken by every statement that creates read-model tables or indexes."""


class TodoRowsView(PostgresTrackingRecorder):
    """A table of todo rows folded from events, plus the library's tracking table."""

    kind = ""

    def __init__(self, datastore: PostgresDatastore, *, tracking_table_name: str, **kw: Any):
        super().__init__(datastore, tracking_table_name=tracking_table_name, **kw)
        self.prefix = tracking_table_name.removesuffix("_tracking")
        self.schema = Identifier(datastore.schema)
        self.rows_table = Identifier(self.rows_table_name)
        self.quarantine = QuarantineTable(datastore.schema, f"{self.prefix}{SUFFIX}")
        self.sql_create_statements.extend(self.table_statements())
        columns = SQL(", ").join(Identifier(c) for c in TodoRow.COLUMNS)
        updates = SQL(", ").join(
            SQL("{0} = EXCLUDED.{0}").format(Identifier(c)) for c in TodoRow.COLUMNS[1:]
        )
        self.upsert_statement = SQL(
            "INSERT INTO {schema}.{table} ({columns}) VALUES ({values}) "
            "ON CONFLICT (id) DO UPDATE SET {updates}"
        ).format(
            schema=self.schema,
            table=self.rows_table,
            columns=columns,
            updates=updates,
            values=SQL(", ").join(SQL("%s") for _ in TodoRow.COLUMNS),
        )
        self.upsert_from_batch_statement = SQL(
            "INSERT INTO {schema}.{table} ({columns}) SELECT {columns} FROM todo_rows_batch "
            "ON CONFLICT (id) DO UPDATE SET {updates}"
        ).format(schema=self.schema, table=self.rows_table, columns=columns, updates=updates)
        self.select_rows_statement = SQL(
            "SELECT * FROM {schema}.{table} WHERE id = ANY(%s) FOR UPDATE"
        ).format(schema=self.schema, table=self.rows_table)
        # Hot-path statements are rendered once: composing SQL per call costs more than
        # the round trip.
        self.upsert_sql = self.upsert_statement.as_bytes()
        self.select_rows_sql = self.select_rows_statement.as_bytes()
        self._list_statements()
        # The library's single-row tracking upsert returns no row when the position would
        # not advance; dividing by that count aborts the transaction (division_by_zero), so
        # an event can never be applied twice, with no round trip to check.
        self.tracking_guard_sql = (
            SQL("WITH t AS ({}) SELECT 1 / (SELECT count(*)::int FROM t)")
            .format(self.insert_tracking_statement)
            .as_bytes()
        )
        self.notify_sql = (
            SQL("SELECT pg_notify({}, {})")
            .format(Literal(NOTIFY_CHANNEL), Literal(self.kind))
            .as_bytes()
        )

    @property
    def rows_table_name(self) -> str:
        return self.prefix

    @property
    def lists_table_name(self) -> str:
        return f"{self.prefix}_lists"

    @property
    def members_table_name(self) -> str:
        return f"{self.prefix}_members"

    @property
    def departures_table_name(self) -> str:
        return f"{self.prefix}_departures"

    @property
    def moves_table_name(self) -> str:
        return f"{self.prefix}_moves"

    keeps_history = False
    """Whether the view keeps membership departures and todo moves (for delta sync)."""

    def _list_statements(self) -> None:
        lists = SQL("{}.{}").format(self.schema, Identifier(self.lists_table_name))
        members = SQL("{}.{}").format(self.schema, Identifier(self.members_table_name))
        self.upsert_list_sql = (
            SQL(
                "INSERT INTO {lists} ({columns}) VALUES ({values}) "
                "ON CONFLICT (id) DO UPDATE SET {updates}"
            )
            .format(
                lists=lists,
                columns=SQL(", ").join(Identifier(c) for c in ListRow.COLUMNS),
                values=SQL(", ").join(SQL("%s") for _ in ListRow.COLUMNS),
                updates=SQL(", ").join(
                    SQL("{0} = EXCLUDED.{0}").format(Identifier(c)) for c in ListRow.COLUMNS[1:]
                ),
            )
            .as_bytes()
        )
        # A list's members come back with it, as one JSON object (user id → role).
        self.select_lists_sql = (
            SQL(
                "SELECT l.*, COALESCE((SELECT jsonb_object_agg(m.user_id, m.role) "
                "FROM {members} m WHERE m.list_id = l.id), '{{}}'::jsonb) AS members "
                "FROM {lists} l WHERE l.id = ANY(%s) FOR UPDATE OF l"
            )
            .format(lists=lists, members=members)
            .as_bytes()
        )
        self.delete_members_sql = (
            SQL("DELETE FROM {} WHERE list_id = ANY(%s)").format(members).as_bytes()
        )
        self.insert_members_sql = (
            SQL(
                "INSERT INTO {} (list_id, user_id, role, joined) "
                "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::bigint[])"
            )
            .format(members)
            .as_bytes()
        )
        self.select_joined_sql = (
            SQL("SELECT list_id, user_id, joined FROM {} WHERE list_id = ANY(%s)")
            .format(members)
            .as_bytes()
        )
        self.upsert_departures_sql = (
            SQL(
                "INSERT INTO {0}.{1} AS d (list_id, user_id, position) "
                "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::bigint[]) "
                "ON CONFLICT (list_id, user_id) DO UPDATE "
                "SET position = GREATEST(d.position, EXCLUDED.position)"
            )
            .format(self.schema, Identifier(self.departures_table_name))
            .as_bytes()
        )
        self.upsert_moves_sql = (
            SQL(
                "INSERT INTO {0}.{1} AS m (from_list, todo_id, position) "
                "SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::bigint[]) "
                "ON CONFLICT (from_list, todo_id) DO UPDATE "
                "SET position = GREATEST(m.position, EXCLUDED.position)"
            )
            .format(self.schema, Identifier(self.moves_table_name))
            .as_bytes()
        )

    def create_table(self) -> None:
        """The library reads whether the tracking table's migration is recorded before it
        takes our DDL lock; two processes opening one generation at once (`todo dev`
        starting the API and the workers) both find it missing and the second to record
        it fails. That one simply looks again, and finds the work done."""
        try:
            super().create_table()
        except IntegrityError:
            super().create_table()

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        curs.execute(DDL_LOCK)  # the library's CREATE TABLE IF NOT EXISTS, serialised too
        super()._create_table(curs)

    def table_statements(self) -> list[Composed]:
        tables = [
            (self.rows_table_name, _ROW_DDL),
            (self.lists_table_name, _LIST_DDL),
            (self.members_table_name, _MEMBER_DDL),
        ]
        if self.keeps_history:
            tables += [
                (self.departures_table_name, _DEPARTURE_DDL),
                (self.moves_table_name, _MOVE_DDL),
            ]
        return [
            SQL("CREATE TABLE IF NOT EXISTS {schema}.{table} ({ddl})").format(
                schema=self.schema, table=Identifier(table), ddl=SQL(ddl)
            )
            for table, ddl in tables
        ] + self.quarantine.statements()

    def index_statements(self) -> list[Composed]:
        """Created after a rebuild has loaded its rows: bulk loads are faster without.
        Every kind finds a user's lists by membership."""
        m = self.members_table_name
        return self.indexes_on(m, {f"{m}_user": "(user_id, list_id)"})

    def indexes_on_rows(self, specs: dict[str, str]) -> list[Composed]:
        """CREATE INDEX statements on the rows table: index name → columns/method/predicate."""
        return self.indexes_on(self.rows_table_name, specs)

    def indexes_on(self, table: str, specs: dict[str, str]) -> list[Composed]:
        """CREATE INDEX statements on ``table``: index name → columns/method/predicate."""
        return [
            SQL("CREATE INDEX IF NOT EXISTS {name} ON {schema}.{table} {spec}").format(
                name=Identifier(name), schema=self.schema, table=Identifier(table), spec=SQL(spec)
            )
            for name, spec in specs.items()
        ]

    def create_indexes(self) -> None:
        """Serialised with every other read-model DDL: concurrent ``CREATE INDEX IF NOT
        EXISTS`` of one name (a worker and an API starting together) can still fail on the
        catalog's unique index."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(DDL_LOCK)
            for statement in self.index_statements():
                curs.execute(statement)

    def apply(self, events: Sequence[Pair], tracking: Tracking) -> None:
        """Fold ``(event, position)`` pairs in and record ``tracking``, in one transaction.

        A batch that touches no quarantined todo and has no undecodable event (an
        in-memory check) takes the fast path. One that does, or that fails because of
        an event, is redone carefully: still one transaction, so its rows, its
        quarantine rows and its tracking position commit together.
        """
        if self.quarantine.ids is None:
            self.load_quarantine()
        if not self.quarantine.touches(events):
            try:
                self._apply_batch(events, tracking)
                return
            except Exception as e:
                if not is_event_fault(e):
                    raise
        self._apply_carefully(events, tracking)

    def load_quarantine(self) -> None:
        """Cache the quarantined todo ids (the table is the truth)."""
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self.quarantine.load(curs)

    def _apply_batch(self, events: Sequence[Pair], tracking: Tracking) -> None:
        # Live (small) batches: pipeline mode sends the statements together, one or two
        # round trips a call. Big ones load with COPY, which pipelines cannot carry.
        small = len(events) < COPY_FROM_ROWS
        with (
            self.datastore.get_connection() as conn,
            conn.pipeline() if small else contextlib.nullcontext(),
            conn.transaction(),
            conn.cursor() as curs,
        ):
            # Safe without waiting for the WAL flush: the view rows and the tracking
            # position commit (or vanish) together, and a lost tail is simply re-applied
            # from the event store, which keeps its own synchronous commits.
            curs.execute(SET_ASYNC_COMMIT, prepare=True)
            self._apply_rows(curs, events)
            self._track(curs, tracking)

    def _apply_rows(self, curs: Cursor[DictRow], events: Sequence[Pair]) -> None:
        first: dict[UUID, tuple[int, bool]] = {}
        for event, _ in events:
            if event.originator_id not in first:
                is_list = aggregate_class(event) is TodoList
                first[event.originator_id] = (event.originator_version, is_list)
        # An aggregate whose first event here is its creation has no row yet: no lookup.
        todo_ids = [i for i, (version, is_list) in first.items() if version > 1 and not is_list]
        list_ids = [i for i, (version, is_list) in first.items() if version > 1 and is_list]
        before: dict[UUID, Row] = {}
        if todo_ids:
            curs.execute(self.select_rows_sql, (todo_ids,), prepare=True)
            before.update((r["id"], TodoRow.from_record(r)) for r in curs.fetchall())
        if list_ids:
            curs.execute(self.select_lists_sql, (list_ids,), prepare=True)
            before.update((r["id"], ListRow.from_record(r, r["members"])) for r in curs.fetchall())
        after = fold_events(before, events)
        history = walk_history(before, events)
        todos = [(before.get(i), r) for i, r in after.items() if isinstance(r, TodoRow)]
        lists = [(before.get(i), r) for i, r in after.items() if isinstance(r, ListRow)]
        if todos:
            self._upsert(curs, [row for _, row in todos])
            self.after_rows_changed(
                curs, [(old if isinstance(old, TodoRow) else None, new) for old, new in todos]
            )
        if lists:
            self._upsert_lists(curs, lists, history)
        if self.keeps_history:
            self._record_history(curs, history)

    def _upsert_lists(
        self, curs: Cursor[DictRow], lists: list[tuple[Row | None, ListRow]], history: History
    ) -> None:
        """The lists' rows, and the members of those whose members changed (replaced,
        each keeping the position they joined at unless they joined again here)."""
        curs.executemany(self.upsert_list_sql, [row.values() for _, row in lists])
        changed = [
            row
            for old, row in lists
            if not (isinstance(old, ListRow) and old.members == row.members)
            or any(key[0] == row.id for key in history.joins)
        ]
        if not changed:
            return
        ids = [row.id for row in changed]
        curs.execute(self.select_joined_sql, (ids,))
        joined = {(r["list_id"], r["user_id"]): int(r["joined"]) for r in curs.fetchall()}
        joined.update(history.joins)
        curs.execute(self.delete_members_sql, (ids,))
        members = [
            (row.id, user, role, joined.get((row.id, user), row.position))
            for row in changed
            for user, role in row.members.items()
        ]
        if members:
            columns = [list(column) for column in zip(*members, strict=True)]
            curs.execute(self.insert_members_sql, columns)

    def _record_history(self, curs: Cursor[DictRow], history: History) -> None:
        if history.departures:
            rows = [(lst, user, pos) for (lst, user), pos in sorted(history.departures.items())]
            curs.execute(self.upsert_departures_sql, [list(c) for c in zip(*rows, strict=True)])
        if history.moves:
            moves = [(lst, todo, pos) for (lst, todo), pos in sorted(history.moves.items())]
            curs.execute(self.upsert_moves_sql, [list(c) for c in zip(*moves, strict=True)])

    def _track(self, curs: Cursor[DictRow], tracking: Tracking) -> None:
        curs.execute(
            self.tracking_guard_sql,
            {
                "application_name": tracking.application_name,
                "notification_id": tracking.notification_id,
            },
            prepare=True,
        )
        curs.execute(self.notify_sql, prepare=True)

    # ---- quarantine ---------------------------------------------------------------------

    def _apply_carefully(self, events: Sequence[Pair], tracking: Tracking) -> None:
        """Apply what can be, quarantine what cannot, hold what is behind it; one commit."""
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            curs.execute(SET_ASYNC_COMMIT)
            groups = split(events, self._still_quarantined(curs, events))
            self._apply_groups(curs, [g for g in groups if g.applicable])
            self.quarantine.record(curs, groups)
            self._track(curs, tracking)
        self.quarantine.remember(groups)
        self._log_heads(groups)

    def _log_heads(self, groups: list[TodoEvents]) -> None:
        for g in groups:
            if g.failed_at is not None and not g.held_behind:
                todo_id, version, position, _, error, held = g.head_row()
                log.warning(
                    "%s: todo %s quarantined at version %d (position %d), %d later held: %s",
                    self.prefix,
                    todo_id,
                    version,
                    position,
                    held,
                    error,
                )

    def _still_quarantined(self, curs: Cursor[DictRow], events: Sequence[Pair]) -> set[UUID]:
        """Of the batch's todos the cache says are quarantined, those the table still says
        are: an admin may have released some meanwhile (both take the same lock)."""
        touched = {e.originator_id for e, _ in events} & (self.quarantine.ids or set())
        if not touched:
            return set()
        self.quarantine.lock(curs)
        return self.quarantine.confirm(curs, touched)

    def _apply_groups(self, curs: Cursor[DictRow], groups: list[TodoEvents]) -> None:
        """All at once in a savepoint; on an event's fault, each half again, down to one
        todo, whose culprit is then found event by event: few savepoints per bad event."""
        if not groups or self._try_apply(curs, [p for g in groups for p in g.applicable]) is None:
            return
        if len(groups) == 1:
            self._find_culprit(curs, groups[0])
            return
        half = len(groups) // 2
        self._apply_groups(curs, groups[:half])
        self._apply_groups(curs, groups[half:])

    def _find_culprit(self, curs: Cursor[DictRow], group: TodoEvents) -> None:
        for index, pair in enumerate(group.applicable):
            error = self._try_apply(curs, [pair])
            if error is not None:
                group.fail(index, describe(error))
                return

    def _try_apply(self, curs: Cursor[DictRow], events: list[Pair]) -> Exception | None:
        """Apply ``events`` in a savepoint: None, or the event's fault that undid them."""
        try:
            with curs.connection.transaction():
                self._apply_rows(curs, events)
        except Exception as e:
            if not is_event_fault(e):
                raise
            return e
        return None

    def resolve(self, todo_id: UUID, read_events: ReadEvents, *, skip: bool) -> Resolution:
        """Re-read the todo's quarantined events and apply them in order, in one transaction
        (after marking the head skipped, if ``skip``): the todo is released when all apply,
        else the one that fails is its new head. NotQuarantined / NothingToResolve."""
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self.quarantine.lock(curs)
            head = self.quarantine.head(curs, todo_id)
            group = TodoEvents(todo_id)
            for pair in read_events(todo_id, head.version, self._tracked(curs)):
                if not (skip and pair[0].originator_version == head.version):
                    group.add(pair)
            if skip:
                self._skip_row(curs, head)
            self._apply_groups(curs, [group] if group.applicable else [])
            self.quarantine.close_head(curs, head, SKIPPED if skip else RELEASED)
            self.quarantine.record(curs, [group])
            new_head = None if group.failed_at is None else self.quarantine.head(curs, todo_id)
        applied = len(group.events) if group.failed_at is None else group.failed_at
        return Resolution(todo_id, applied, new_head)

    def _skip_row(self, curs: Cursor[DictRow], head: QuarantinedTodo) -> None:
        """A skipped event is a no-op in the view: the row (a todo's or a list's) only
        moves past its version."""
        for table in (self.rows_table_name, self.lists_table_name):
            curs.execute(
                SQL(
                    "UPDATE {}.{} SET version = %s, position = %s WHERE id = %s AND version = %s"
                ).format(self.schema, Identifier(table)),
                (head.version, head.position, head.todo_id, head.version - 1),
            )

    def _tracked(self, curs: Cursor[DictRow]) -> int:
        """The view's position, read in the caller's transaction (after its lock)."""
        curs.execute(self.max_tracking_id_statement, (APPLICATION_NAME,))
        row = curs.fetchone()
        return int(row["max"] or 0) if row else 0

    def quarantined(self) -> list[QuarantinedTodo]:
        with self.datastore.get_connection() as conn:
            return quarantined_todos(conn, self.datastore.schema, self.quarantine.name)

    def _upsert(self, curs: Cursor[DictRow], rows: list[TodoRow]) -> None:
        if len(rows) < COPY_FROM_ROWS:
            curs.executemany(self.upsert_sql, [row.values() for row in rows])
            return
        # Large batches (rebuilds): COPY into a scratch table, then one upsert statement.
        curs.execute(
            SQL(
                "CREATE TEMP TABLE IF NOT EXISTS todo_rows_batch "
                "(LIKE {schema}.{table}) ON COMMIT DELETE ROWS"
            ).format(schema=self.schema, table=self.rows_table)
        )
        columns = SQL(", ").join(Identifier(c) for c in TodoRow.COLUMNS)
        with curs.copy(SQL("COPY todo_rows_batch ({}) FROM STDIN").format(columns)) as copy:
            for row in rows:
                copy.write_row(row.values())
        curs.execute(self.upsert_from_batch_statement)

    def after_rows_changed(
        self, curs: Cursor[DictRow], changed: list[tuple[TodoRow | None, TodoRow]]
    ) -> None:
        """Hook for views that derive more from each row change."""

    def drop(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            for table in self.owned_tables():
                curs.execute(
                    SQL("DROP TABLE IF EXISTS {0}.{1}").format(self.schema, Identifier(table))
                )

    def owned_tables(self) -> list[str]:
        history = [self.departures_table_name, self.moves_table_name] if self.keeps_history else []
        return [
            self.rows_table_name,
            self.lists_table_name,
            self.members_table_name,
            *history,
            self.tracking_table_name,
            self.quarantine.name,
        ]

    @classmethod
    def sql_views_for(cls, prefix: str) -> dict[str, str]:
        """Stable view name → the table of generation ``prefix`` it exposes."""
        return {}

    RETIRED_SQL_VIEWS: tuple[str, ...] = ()
    """Stable views earlier releases made (dropped on activation, so nothing keeps an
    old generation's tables from being dropped)."""


class TodosView(TodoRowsView):
    """The current state of every todo and list: the API representation plus owner and
    deleted, and every list's members."""

    kind = "todos"
    keeps_history = True

    def index_statements(self) -> list[Composed]:
        t = self.rows_table_name
        live = "WHERE NOT deleted"
        m, d, v = self.members_table_name, self.departures_table_name, self.moves_table_name
        lists = self.lists_table_name
        # Delta sync and the live stream: what changed after a position, per list or
        # overall (tododb.projections.changes).
        history = [
            *self.indexes_on(m, {f"{m}_joined": "(joined)"}),
            *self.indexes_on(d, {f"{d}_user": "(user_id, position)", f"{d}_pos": "(position)"}),
            *self.indexes_on(v, {f"{v}_from": "(from_list, position)", f"{v}_pos": "(position)"}),
            *self.indexes_on(lists, {f"{lists}_changed": "(position)"}),
        ]
        specs = {
            f"{t}_list_changed": "(list_id, position)",
            f"{t}_changed": "(position)",
            f"{t}_list_position": f"(list_id, order_key, id) {live}",
            f"{t}_list_created": f"(list_id, created_at, id) {live}",
            f"{t}_list_updated": f"(list_id, updated_at, id) {live}",
            f"{t}_list_due": f"(list_id, (COALESCE(due, 'infinity'::timestamptz)), id) {live}",
            f"{t}_assignee": f"(assignee, list_id) {live} AND assignee IS NOT NULL",
            f"{t}_tags": "USING gin (tags)",
        }
        return [*super().index_statements(), *self.indexes_on_rows(specs), *history]

    @classmethod
    def sql_views_for(cls, prefix: str) -> dict[str, str]:
        return {
            "todos": prefix,
            "lists": f"{prefix}_lists",
            "list_members": f"{prefix}_members",
            "list_departures": f"{prefix}_departures",
            "todo_moves": f"{prefix}_moves",
        }


def _counts(row: TodoRow | None) -> tuple[int, int, int]:
    """(open, completed, total) that one todo contributes to its list's stats."""
    if row is None or row.deleted:
        return (0, 0, 0)
    return (1, 0, 1) if row.status == "open" else (0, 1, 1)


class StatsView(TodoRowsView):
    """Per-list figures: counters kept per event; time-relative ones by indexed query.
    A user's figures are the sums over the lists they may see (its lists and members
    are folded here too, so visibility and figures share one position)."""

    kind = "stats"
    RETIRED_SQL_VIEWS = ("stats_users",)

    def __init__(self, datastore: PostgresDatastore, *, tracking_table_name: str, **kw: Any):
        super().__init__(datastore, tracking_table_name=tracking_table_name, **kw)
        self.counts_table = Identifier(self.counts_table_name)
        self.bump_sql = (
            SQL(
                "INSERT INTO {schema}.{table} AS c (list_id, open, completed, total) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (list_id) DO UPDATE SET "
                "open = c.open + EXCLUDED.open, completed = c.completed + EXCLUDED.completed, "
                "total = c.total + EXCLUDED.total"
            )
            .format(schema=self.schema, table=self.counts_table)
            .as_bytes()
        )
        self.drop_empty_sql = (
            SQL(
                "DELETE FROM {schema}.{table} WHERE list_id = ANY(%s) "
                "AND open = 0 AND completed = 0 AND total = 0"
            )
            .format(schema=self.schema, table=self.counts_table)
            .as_bytes()
        )

    @property
    def rows_table_name(self) -> str:
        return f"{self.prefix}_todos"

    @property
    def counts_table_name(self) -> str:
        return f"{self.prefix}_counts"

    def table_statements(self) -> list[Composed]:
        return [
            *super().table_statements(),
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{table} (list_id uuid PRIMARY KEY, "
                "open integer NOT NULL, completed integer NOT NULL, total integer NOT NULL)"
            ).format(schema=self.schema, table=Identifier(self.counts_table_name)),
        ]

    def index_statements(self) -> list[Composed]:
        t = self.rows_table_name
        specs = {
            f"{t}_open_due": "(list_id, due) WHERE status = 'open' AND NOT deleted",
            f"{t}_completed_at": (
                "(list_id, completed_at) WHERE status = 'completed' AND NOT deleted"
            ),
        }
        return [*super().index_statements(), *self.indexes_on_rows(specs)]

    def after_rows_changed(
        self, curs: Cursor[DictRow], changed: list[tuple[TodoRow | None, TodoRow]]
    ) -> None:
        """A todo's counts leave its old list and join its new one (a move shifts them)."""
        deltas: dict[UUID, list[int]] = defaultdict(lambda: [0, 0, 0])
        for old, new in changed:
            if old is not None:
                for i, count in enumerate(_counts(old)):
                    deltas[old.list_id][i] -= count
            for i, count in enumerate(_counts(new)):
                deltas[new.list_id][i] += count
        # A list has a row exactly while it counts something, however the events were
        # batched (live, or a rebuild where a todo's create and move share a batch): in
        # key order, so concurrent writers (a partitioned rebuild) lock rows in one order.
        bumps = [(list_id, *d) for list_id, d in sorted(deltas.items()) if any(d)]
        if bumps:
            curs.executemany(self.bump_sql, bumps)
        emptied = [list_id for list_id, d in sorted(deltas.items()) if min(d) < 0]
        if emptied:
            curs.execute(self.drop_empty_sql, (emptied,))

    def owned_tables(self) -> list[str]:
        return [*super().owned_tables(), self.counts_table_name]

    @classmethod
    def sql_views_for(cls, prefix: str) -> dict[str, str]:
        return {
            "stats_todos": f"{prefix}_todos",
            "stats_counts": f"{prefix}_counts",
            "stats_lists": f"{prefix}_lists",
            "stats_list_members": f"{prefix}_members",
        }


VIEW_CLASSES: dict[str, type[TodoRowsView]] = {"todos": TodosView, "stats": StatsView}
