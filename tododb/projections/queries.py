"""Read-model queries: the caller's todos (keyset pages), one todo, stats, positions."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg.sql import SQL, Composable, Identifier

from tododb.projections.registry import KINDS, read_position
from tododb.projections.rows import TodoRow
from tododb.projections.views import NOTIFY_CHANNEL as VIEWS_CHANNEL

__all__ = [
    "KINDS",
    "VIEWS_CHANNEL",
    "InvalidCursor",
    "ReadModelQueries",
    "TodoRow",
    "read_position",
]

SortKey = Literal["created_at", "-created_at", "due", "-due", "updated_at", "-updated_at"]
SORT_KEYS: tuple[str, ...] = (
    "created_at",
    "-created_at",
    "due",
    "-due",
    "updated_at",
    "-updated_at",
)
INFINITY = "infinity"


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class TodoFilter:
    status: Literal["open", "completed"] | None = None
    tag: str | None = None
    priority: Literal["low", "normal", "high"] | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    q: str | None = None

    def fingerprint(self) -> str:
        return json.dumps(
            [
                self.status,
                self.tag,
                self.priority,
                self.due_before.isoformat() if self.due_before else None,
                self.due_after.isoformat() if self.due_after else None,
                self.q,
            ]
        )


@dataclass(frozen=True)
class Page:
    items: list[TodoRow]
    next_cursor: str | None
    position: int


def _encode_cursor(sort: str, filters: TodoFilter, row: TodoRow) -> str:
    field = sort.lstrip("-")
    value = getattr(row, field)
    payload = {
        "s": sort,
        "f": filters.fingerprint(),
        "v": INFINITY if value is None else value.isoformat(),
        "id": str(row.id),
    }
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _decode_cursor(
    cursor: str, sort: str, filters: TodoFilter
) -> tuple[str | datetime, UUID]:
    """The cursor's position; ``InvalidCursor`` for anything this API did not issue.

    Cursors are not signed, so the value is parsed here into an aware UTC instant (what
    ``_encode_cursor`` writes) and handed to PostgreSQL as a typed parameter: a forged
    value can never reach the database as text it would refuse (a 500).
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        todo_id = UUID(payload["id"])
        value = _cursor_value(str(payload["v"]))
    except (ValueError, KeyError, TypeError, OverflowError, json.JSONDecodeError) as e:
        raise InvalidCursor("the cursor is not one this API issued") from e
    if payload.get("s") != sort or payload.get("f") != filters.fingerprint():
        raise InvalidCursor("the cursor belongs to a query with other sort or filters")
    return value, todo_id


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

    def get_todo(self, conn: psycopg.Connection[Any], owner: str, todo_id: UUID) -> TodoRow | None:
        row = conn.execute(
            SQL("SELECT * FROM {}.todos WHERE id = %s AND owner = %s").format(self.schema),
            (todo_id, owner),
        ).fetchone()
        return None if row is None else TodoRow.from_record(row)

    def list_todos(
        self,
        conn: psycopg.Connection[Any],
        owner: str,
        filters: TodoFilter,
        *,
        sort: str = "created_at",
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        if sort not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}")
        field = sort.lstrip("-")
        descending = sort.startswith("-")
        sort_expr: Composable = (
            SQL("COALESCE(due, 'infinity'::timestamptz)") if field == "due" else Identifier(field)
        )
        where: list[Composable] = [SQL("owner = %s"), SQL("NOT deleted")]
        params: list[Any] = [owner]
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
            where.append(SQL("({}, id) {} (%s::timestamptz, %s)").format(sort_expr, op))
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

    def stats(self, conn: psycopg.Connection[Any], owner: str) -> dict[str, int]:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            counters = conn.execute(
                SQL("SELECT open, completed, total FROM {}.stats_users WHERE owner = %s").format(
                    self.schema
                ),
                (owner,),
            ).fetchone()
            timed = conn.execute(
                SQL(
                    "SELECT "
                    "count(*) FILTER (WHERE status = 'open' AND due < now()) AS overdue, "
                    "count(*) FILTER (WHERE status = 'completed' "
                    "  AND completed_at >= now() - interval '7 days') AS completed_last_7_days "
                    "FROM {}.stats_todos WHERE owner = %s AND NOT deleted "
                    "AND ((status = 'open' AND due < now()) OR (status = 'completed' "
                    "  AND completed_at >= now() - interval '7 days'))"
                ).format(self.schema),
                (owner,),
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
