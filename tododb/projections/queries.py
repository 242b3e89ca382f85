"""Read-model queries: the todos of the lists a user may see (keyset pages), one todo,
stats, the user's lists, positions; and the order index the application asks for
neighbouring order keys.

Access follows membership, as of the read model's position: the lists a user may see
are those they are a member of (and not deleted), plus their own Inbox, always (even
before its aggregate exists: it is theirs by its id).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from uuid import UUID

import psycopg
from psycopg.sql import SQL, Composable, Composed, Identifier

from tododb.domain import INBOX_NAME, Role, inbox_id
from tododb.infra.postgres import ConnectionFactory
from tododb.projections.changes import (
    Change,
    ChangeKey,
    ChangeQueries,
    ListState,
    changes_for,
    group_by_position,
    visible_after,
)
from tododb.projections.registry import KINDS, read_position
from tododb.projections.rows import TodoRow
from tododb.projections.views import NOTIFY_CHANNEL as VIEWS_CHANNEL

__all__ = [
    "KINDS",
    "VIEWS_CHANNEL",
    "Change",
    "ChangeKey",
    "ChangeQueries",
    "InvalidCursor",
    "ListEntry",
    "ListPage",
    "ListState",
    "ReadModelOrderIndex",
    "ReadModelQueries",
    "SortKey",
    "TodoRow",
    "changes_for",
    "group_by_position",
    "read_position",
    "visible_after",
]

SortKey = Literal[
    "created_at", "-created_at", "due", "-due", "updated_at", "-updated_at", "position", "-position"
]
SORT_KEYS: tuple[str, ...] = get_args(SortKey)
LIST_SORTS: tuple[str, ...] = ("position", "-position")
"""Sorts that only mean something within one list: they need ``list_id``."""
INFINITY = "infinity"
_ORDER_KEY = re.compile(r"[0-9A-Za-z]{1,2048}")


class InvalidCursor(ValueError):
    pass


class SortNeedsList(ValueError):
    """``sort=position`` orders the todos of one list: without ``list_id`` it means nothing."""


@dataclass(frozen=True)
class TodoFilter:
    status: Literal["open", "completed"] | None = None
    tag: str | None = None
    priority: Literal["low", "normal", "high"] | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    q: str | None = None
    list_id: UUID | None = None
    assignee: str | None = None
    """A user id (the API has resolved ``me``)."""

    def fingerprint(self) -> str:
        return json.dumps(
            [
                self.status,
                self.tag,
                self.priority,
                self.due_before.isoformat() if self.due_before else None,
                self.due_after.isoformat() if self.due_after else None,
                self.q,
                str(self.list_id) if self.list_id else None,
                self.assignee,
            ]
        )


@dataclass(frozen=True)
class Page:
    items: list[TodoRow]
    next_cursor: str | None
    position: int


@dataclass(frozen=True)
class ListEntry:
    """A list as one of its members sees it in their lists."""

    id: UUID
    name: str
    inbox: bool
    owner: str
    role: str
    """The caller's role in the list."""
    open_todos: int
    version: int
    """0 for an Inbox not made yet."""
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class ListPage:
    items: list[ListEntry]
    next_cursor: str | None
    position: int


def _field(sort: str) -> str:
    field = sort.lstrip("-")
    return "order_key" if field == "position" else field


def _encode(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode(cursor: str) -> dict[str, Any]:
    padded = cursor + "=" * (-len(cursor) % 4)
    payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    if not isinstance(payload, dict):
        raise ValueError("not an object")
    return payload


def _encode_cursor(sort: str, filters: TodoFilter, row: TodoRow) -> str:
    value = getattr(row, _field(sort))
    if isinstance(value, datetime):
        value = value.isoformat()
    return _encode(
        {
            "s": sort,
            "f": filters.fingerprint(),
            "v": INFINITY if value is None else value,
            "id": str(row.id),
        }
    )


def _decode_cursor(cursor: str, sort: str, filters: TodoFilter) -> tuple[str | datetime, UUID]:
    """The cursor's position; ``InvalidCursor`` for anything this API did not issue.

    Cursors are not signed, so the value is parsed here into an aware UTC instant (what
    ``_encode_cursor`` writes), or checked to be an order key, and handed to PostgreSQL as
    a typed parameter: a forged value can never reach the database as text it would
    refuse (a 500).
    """
    try:
        payload = _decode(cursor)
        todo_id = UUID(payload["id"])
        raw = payload["v"]
        value = _order_key(raw) if sort in LIST_SORTS else _cursor_value(str(raw))
    except (ValueError, KeyError, TypeError, OverflowError, json.JSONDecodeError) as e:
        raise InvalidCursor("the cursor is not one this API issued") from e
    if payload.get("s") != sort or payload.get("f") != filters.fingerprint():
        raise InvalidCursor("the cursor belongs to a query with other sort or filters")
    return value, todo_id


def _order_key(value: object) -> str:
    if not isinstance(value, str) or _ORDER_KEY.fullmatch(value) is None:
        raise ValueError("not an order key")
    return value


def _cursor_value(text: str) -> str | datetime:
    if text == INFINITY:
        return INFINITY
    instant = datetime.fromisoformat(text)
    if instant.tzinfo is None:
        raise ValueError("a cursor instant carries its offset")
    return instant.astimezone(UTC)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ReadModelQueries:
    """SQL over the stable views in the read-model schema (whatever generation is live)."""

    def __init__(self, schema: str = "readmodels") -> None:
        self.schema = Identifier(schema)
        self.schema_name = schema

    # ---- access ---------------------------------------------------------------------

    def visible_lists(self, kind: str = "todos") -> Composed:
        """An array of the lists a user may see, in the ``kind`` read model; its two
        parameters are the user and their Inbox's id (``visible_params``)."""
        prefix = "" if kind == "todos" else f"{kind}_"
        return SQL(
            "(ARRAY(SELECT m.list_id FROM {schema}.{members} m JOIN {schema}.{lists} l "
            "ON l.id = m.list_id WHERE m.user_id = %s AND NOT l.deleted) || %s::uuid)"
        ).format(
            schema=self.schema,
            members=Identifier(f"{prefix}list_members"),
            lists=Identifier(f"{prefix}lists"),
        )

    @staticmethod
    def visible_params(user: str) -> list[Any]:
        return [user, inbox_id(user)]

    # ---- todos ----------------------------------------------------------------------

    def get_todo(self, conn: psycopg.Connection[Any], user: str, todo_id: UUID) -> TodoRow | None:
        """The todo, if it is in a list ``user`` may see (else None, as if unknown)."""
        row = conn.execute(
            SQL("SELECT * FROM {}.todos WHERE id = %s AND list_id = ANY({})").format(
                self.schema, self.visible_lists()
            ),
            [todo_id, *self.visible_params(user)],
        ).fetchone()
        return None if row is None else TodoRow.from_record(row)

    def list_todos(
        self,
        conn: psycopg.Connection[Any],
        user: str,
        filters: TodoFilter,
        *,
        sort: str = "created_at",
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        if sort not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}")
        if sort in LIST_SORTS and filters.list_id is None:
            raise SortNeedsList(f"sort={sort} orders one list's todos: give list_id")
        field = _field(sort)
        descending = sort.startswith("-")
        sort_expr: Composable = (
            SQL("COALESCE(due, 'infinity'::timestamptz)") if field == "due" else Identifier(field)
        )
        where: list[Composable] = [
            SQL("list_id = ANY({})").format(self.visible_lists()),
            SQL("NOT deleted"),
        ]
        params: list[Any] = self.visible_params(user)
        if filters.list_id:
            where.append(SQL("list_id = %s"))
            params.append(filters.list_id)
        if filters.assignee:
            where.append(SQL("assignee = %s"))
            params.append(filters.assignee)
        if filters.status:
            where.append(SQL("status = %s"))
            params.append(filters.status)
        if filters.priority:
            where.append(SQL("priority = %s"))
            params.append(filters.priority)
        if filters.tag:
            where.append(SQL("tags @> ARRAY[%s]::text[]"))
            params.append(filters.tag)
        if filters.due_before:
            where.append(SQL("due < %s"))
            params.append(filters.due_before)
        if filters.due_after:
            where.append(SQL("due > %s"))
            params.append(filters.due_after)
        if filters.q:
            where.append(SQL("(title ILIKE %s OR description ILIKE %s)"))
            pattern = f"%{_escape_like(filters.q)}%"
            params += [pattern, pattern]
        if cursor:
            value, after_id = _decode_cursor(cursor, sort, filters)
            op = SQL("<") if descending else SQL(">")
            typed = SQL('%s::text COLLATE "C"') if sort in LIST_SORTS else SQL("%s::timestamptz")
            where.append(SQL("({}, id) {} ({}, %s)").format(sort_expr, op, typed))
            params += [value, after_id]
        direction = SQL("DESC") if descending else SQL("ASC")
        statement = SQL(
            "SELECT * FROM {schema}.todos WHERE {where} ORDER BY {expr} {dir}, id {dir} LIMIT %s"
        ).format(schema=self.schema, where=SQL(" AND ").join(where), expr=sort_expr, dir=direction)
        params.append(limit + 1)
        with conn.transaction():
            # One snapshot for the page and the position it reflects.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            rows = [TodoRow.from_record(r) for r in conn.execute(statement, params).fetchall()]
            position = read_position(conn, self.schema_name, "todos")
        next_cursor = _encode_cursor(sort, filters, rows[limit - 1]) if len(rows) > limit else None
        return Page(items=rows[:limit], next_cursor=next_cursor, position=position)

    def todo_ids_in_list(self, conn: psycopg.Connection[Any], list_id: UUID) -> list[UUID]:
        """The live (not deleted) todos of ``list_id``, in list order."""
        rows = conn.execute(
            SQL(
                "SELECT id FROM {}.todos WHERE list_id = %s AND NOT deleted ORDER BY order_key, id"
            ).format(self.schema),
            (list_id,),
        ).fetchall()
        return [r["id"] if isinstance(r, dict) else r[0] for r in rows]

    # ---- lists ----------------------------------------------------------------------

    def lists(
        self,
        conn: psycopg.Connection[Any],
        user: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ListPage:
        """The lists ``user`` is a member of, with their role: their Inbox first (made or
        not), then the others oldest first, keyset-paginated by (created_at, id)."""
        inbox = inbox_id(user)
        where: list[Composable] = [
            SQL("m.user_id = %s"),
            SQL("NOT l.deleted"),
            SQL("l.id <> %s"),
        ]
        params: list[Any] = [user, inbox]
        if cursor:
            after = _decode_list_cursor(cursor)
            if after is not None:  # else: the first page held the Inbox alone
                where.append(SQL("(l.created_at, l.id) > (%s::timestamptz, %s)"))
                params += list(after)
        others_limit = limit if cursor else limit - 1
        params.append(others_limit + 1)
        statement = SQL(
            "SELECT l.*, m.role FROM {schema}.list_members m JOIN {schema}.lists l "
            "ON l.id = m.list_id WHERE {where} ORDER BY l.created_at, l.id LIMIT %s"
        ).format(schema=self.schema, where=SQL(" AND ").join(where))
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            rows = conn.execute(statement, params).fetchall()
            more = len(rows) > others_limit
            rows = rows[:others_limit]
            if not cursor:
                own = conn.execute(
                    SQL("SELECT l.*, %s::text AS role FROM {}.lists l WHERE l.id = %s").format(
                        self.schema
                    ),
                    (Role.OWNER.value, inbox),
                ).fetchone()
                rows.insert(0, own or _unmade_inbox(user))
            counts = self._open_counts(conn, [r["id"] for r in rows])
            position = read_position(conn, self.schema_name, "todos")
        items = [_list_entry(r, counts.get(r["id"], 0)) for r in rows]
        next_cursor = None
        if more:
            last = items[-1]
            since = None if last.id == inbox else last.created_at
            next_cursor = _encode(
                {"k": "lists", "v": since and since.isoformat(), "id": str(last.id)}
            )
        return ListPage(items=items, next_cursor=next_cursor, position=position)

    def _open_counts(self, conn: psycopg.Connection[Any], list_ids: list[UUID]) -> dict[UUID, int]:
        rows = conn.execute(
            SQL(
                "SELECT list_id, count(*) AS n FROM {}.todos WHERE list_id = ANY(%s) "
                "AND status = 'open' AND NOT deleted GROUP BY list_id"
            ).format(self.schema),
            (list_ids,),
        ).fetchall()
        return {r["list_id"]: int(r["n"]) for r in rows}

    # ---- stats ----------------------------------------------------------------------

    def stats(self, conn: psycopg.Connection[Any], user: str) -> dict[str, int]:
        """The figures of every list ``user`` may see, summed."""
        visible = self.visible_lists("stats")
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            counters = conn.execute(
                SQL(
                    "SELECT COALESCE(sum(open), 0) AS open, "
                    "COALESCE(sum(completed), 0) AS completed, COALESCE(sum(total), 0) AS total "
                    "FROM {}.stats_counts WHERE list_id = ANY({})"
                ).format(self.schema, visible),
                self.visible_params(user),
            ).fetchone()
            timed = conn.execute(
                SQL(
                    "SELECT "
                    "count(*) FILTER (WHERE status = 'open' AND due < now()) AS overdue, "
                    "count(*) FILTER (WHERE status = 'completed' "
                    "  AND completed_at >= now() - interval '7 days') AS completed_last_7_days "
                    "FROM {}.stats_todos WHERE list_id = ANY({}) AND NOT deleted "
                    "AND ((status = 'open' AND due < now()) OR (status = 'completed' "
                    "  AND completed_at >= now() - interval '7 days'))"
                ).format(self.schema, visible),
                self.visible_params(user),
            ).fetchone()
            position = read_position(conn, self.schema_name, "stats")
        c = counters or {"open": 0, "completed": 0, "total": 0}
        t = timed or {"overdue": 0, "completed_last_7_days": 0}
        return {
            "open": int(c["open"]),
            "completed": int(c["completed"]),
            "overdue": int(t["overdue"]),
            "total": int(c["total"]),
            "completed_last_7_days": int(t["completed_last_7_days"]),
            "position": position,
        }

    def positions(self, conn: psycopg.Connection[Any]) -> dict[str, int]:
        return {kind: read_position(conn, self.schema_name, kind) for kind in KINDS}


def _unmade_inbox(user: str) -> dict[str, Any]:
    """A user's Inbox before any command made it: theirs all the same."""
    return {
        "id": inbox_id(user),
        "name": INBOX_NAME,
        "inbox": True,
        "owner": user,
        "role": Role.OWNER.value,
        "version": 0,
        "created_at": None,
        "updated_at": None,
    }


def _list_entry(record: dict[str, Any], open_todos: int) -> ListEntry:
    return ListEntry(
        id=record["id"],
        name=record["name"],
        inbox=record["inbox"],
        owner=record["owner"],
        role=record["role"],
        open_todos=open_todos,
        version=record["version"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
    )


def _decode_list_cursor(cursor: str) -> tuple[datetime, UUID] | None:
    """Where the next page starts: after (created_at, id), or None: the first list after
    the Inbox."""
    try:
        payload = _decode(cursor)
        if payload.get("k") != "lists":
            raise ValueError("not a lists cursor")
        list_id = UUID(payload["id"])
        if payload["v"] is None:
            return None
        value = _cursor_value(str(payload["v"]))
        if not isinstance(value, datetime):
            raise ValueError("not an instant")
        return value, list_id
    except (ValueError, KeyError, TypeError, OverflowError, json.JSONDecodeError) as e:
        raise InvalidCursor("the cursor is not one this API issued") from e


class ReadModelOrderIndex:
    """The application's ``OrderIndex``: neighbouring order keys among a list's live
    todos, from the todos read model (possibly stale: the application copes)."""

    def __init__(self, connect: ConnectionFactory, schema: str = "readmodels") -> None:
        self.connect = connect
        table = SQL("{}.todos").format(Identifier(schema))
        self.next_sql = SQL(
            "SELECT order_key FROM {} WHERE list_id = %s AND NOT deleted "
            'AND order_key > %s::text COLLATE "C" ORDER BY order_key LIMIT 1'
        ).format(table)
        self.previous_sql = SQL(
            "SELECT order_key FROM {} WHERE list_id = %s AND NOT deleted "
            'AND order_key < %s::text COLLATE "C" ORDER BY order_key DESC LIMIT 1'
        ).format(table)

    def next_key(self, list_id: UUID, key: str) -> str | None:
        """The smallest key after ``key`` in ``list_id``, if any."""
        return self._key(self.next_sql, list_id, key)

    def previous_key(self, list_id: UUID, key: str) -> str | None:
        """The largest key before ``key`` in ``list_id``, if any."""
        return self._key(self.previous_sql, list_id, key)

    def _key(self, statement: Composed, list_id: UUID, key: str) -> str | None:
        with self.connect() as conn:
            row = conn.execute(statement, (list_id, key)).fetchone()
        return None if row is None else str(row["order_key"])
