"""What changed for a user after a log position: delta sync and the live stream.

A client holds the state it saw at position ``since`` (the lists it could see, their
live todos). The changes since then, as of the read model's position ``P``, are upserts
(the current row) and removals, each at a position in ``(since, P]``:

- a visible list whose row changed (renamed, members or roles changed, created): upsert
  at its position;
- a list the user stopped seeing (left, removed, or the list deleted): removal at that
  position, with a removal of every todo in it at the same position;
- a list the user joined after ``since``: upsert, with every live todo of it at
  ``max(joined, todo position)`` (they may have changed long before);
- a todo in a visible list that changed: upsert, or removal if deleted;
- a todo that moved from a list the user could see to one they cannot: removal at the
  move's position.

An entity appears once, at its latest position, so the changes sort by (position, lists
first, id) and a client applies them in that order. Removing something the client does
not hold is harmless (so the rules may over-approximate what it holds), and an entity's
position only grows as the log does, so pages computed at later positions continue
earlier ones by that key: the last page leaves the client at the state of its position.

The same rules serve both: ``read_user_changes`` fetches what one user's delta needs
through the per-list indexes; ``read_range`` fetches everything committed in a range
once, for the stream hub to split among its streams (``changes_for``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.sql import SQL, Identifier

from tododb.domain import INBOX_NAME, Role, inbox_id
from tododb.projections.registry import read_position
from tododb.projections.rows import TodoRow

LIST_RANK, TODO_RANK = 0, 1
ChangeKey = tuple[int, int, str]
"""(position, 0 for a list / 1 for a todo, id): the order changes are applied in."""


@dataclass(frozen=True)
class ListState:
    """A list's row and its members: user → (role, position they joined at)."""

    id: UUID
    name: str
    owner: str
    inbox: bool
    deleted: bool
    version: int
    position: int
    created_at: datetime | None
    updated_at: datetime | None
    members: dict[str, tuple[str, int]]

    def role_of(self, user: str) -> str | None:
        member = self.members.get(user)
        return None if member is None or self.deleted else member[0]


def unmade_inbox(user: str) -> ListState:
    """A user's Inbox before any command made it: theirs all the same."""
    return ListState(
        id=inbox_id(user),
        name=INBOX_NAME,
        owner=user,
        inbox=True,
        deleted=False,
        version=0,
        position=0,
        created_at=None,
        updated_at=None,
        members={user: (Role.OWNER.value, 0)},
    )


@dataclass(frozen=True)
class Change:
    """An upsert (``list_state`` or ``todo`` set) or a removal (neither) at ``position``."""

    position: int
    kind: str
    """``list`` or ``todo``."""
    id: UUID
    list_state: ListState | None = None
    todo: TodoRow | None = None

    @property
    def removal(self) -> bool:
        return self.list_state is None and self.todo is None

    @property
    def key(self) -> ChangeKey:
        return (self.position, LIST_RANK if self.kind == "list" else TODO_RANK, str(self.id))


@dataclass(frozen=True)
class Move:
    from_list: UUID
    todo_id: UUID
    position: int
    current_list: UUID


@dataclass
class Changed:
    """The rows behind the changes after ``since`` (for one user, or for everyone)."""

    since: int
    position: int
    """The read model's position these rows are as of."""
    lists: dict[UUID, ListState] = field(default_factory=dict)
    """Lists whose row changed after ``since``."""
    todos: list[TodoRow] = field(default_factory=list)
    """Todos whose row changed after ``since``."""
    departures: dict[str, dict[UUID, int]] = field(default_factory=dict)
    """User → list → position they left it at (after ``since``)."""
    moves: list[Move] = field(default_factory=list)
    """Todos that left a list after ``since``."""
    list_todos: dict[UUID, list[TodoRow]] = field(default_factory=dict)
    """Every todo row of the lists joined or lost after ``since``."""


def changes_for(
    user: str, data: Changed, visible: Collection[UUID], seen: Collection[UUID] = ()
) -> list[Change]:
    """The changes ``user`` sees after ``data.since``, sorted; ``visible`` is the lists
    they see at ``data.position``, ``seen`` any lists they may have seen before."""
    since = data.since
    best: dict[tuple[str, UUID], Change] = {}

    def put(change: Change) -> None:
        key = (change.kind, change.id)
        held = best.get(key)
        if held is None or held.position < change.position:
            best[key] = change

    lost: dict[UUID, int] = {}
    for list_id, position in data.departures.get(user, {}).items():
        if list_id not in visible and position > since:
            lost[list_id] = position
    joined: dict[UUID, int] = {}
    for state in data.lists.values():
        if state.id in visible:
            put(Change(state.position, "list", state.id, list_state=state))
            member = state.members.get(user)
            if member is not None and member[1] > since:
                joined[state.id] = member[1]
        elif state.deleted and user in state.members:
            lost[state.id] = max(lost.get(state.id, 0), state.position)
    for list_id, position in lost.items():
        put(Change(position, "list", list_id))
        for todo in data.list_todos.get(list_id, ()):
            if todo.list_id == list_id:
                put(Change(position, "todo", todo.id))
    for list_id, position in joined.items():
        for todo in data.list_todos.get(list_id, ()):
            if todo.list_id == list_id and not todo.deleted:
                put(Change(max(position, todo.position), "todo", todo.id, todo=todo))
    for todo in data.todos:
        if todo.list_id in visible and todo.position > since:
            put(Change(todo.position, "todo", todo.id, todo=None if todo.deleted else todo))
    for move in data.moves:
        if move.current_list in visible or move.position <= since:
            continue
        if move.from_list in visible or move.from_list in lost or move.from_list in seen:
            put(Change(move.position, "todo", move.todo_id))
    return sorted(best.values(), key=lambda c: c.key)


class ChangeQueries:
    """The SQL behind delta sync, snapshots and the stream, over the stable views."""

    def __init__(self, schema: str = "readmodels") -> None:
        self.schema_name = schema
        s = Identifier(schema)
        self.visible_sql = SQL(
            "SELECT m.list_id FROM {s}.list_members m JOIN {s}.lists l ON l.id = m.list_id "
            "WHERE m.user_id = %s AND NOT l.deleted"
        ).format(s=s)
        select_lists = SQL(
            "SELECT l.id, l.name, l.owner, l.inbox, l.deleted, l.version, l.position, "
            "l.created_at, l.updated_at, COALESCE((SELECT jsonb_object_agg(m.user_id, "
            "jsonb_build_array(m.role, m.joined)) FROM {s}.list_members m "
            "WHERE m.list_id = l.id), '{{}}'::jsonb) AS members FROM {s}.lists l"
        ).format(s=s)
        self.lists_by_id_sql = SQL("{} WHERE l.id = ANY(%s)").format(select_lists)
        self.user_lists_changed_sql = SQL(
            "{} WHERE l.position > %s AND (l.id = %s OR l.id IN "
            "(SELECT list_id FROM {}.list_members WHERE user_id = %s))"
        ).format(select_lists, s)
        self.lists_changed_sql = SQL("{} WHERE l.position > %s").format(select_lists)
        self.user_departures_sql = SQL(
            "SELECT list_id, user_id, position FROM {s}.list_departures "
            "WHERE user_id = %s AND position > %s"
        ).format(s=s)
        self.departures_sql = SQL(
            "SELECT list_id, user_id, position FROM {s}.list_departures WHERE position > %s"
        ).format(s=s)
        self.user_todos_changed_sql = SQL(
            "SELECT * FROM {s}.todos WHERE list_id = ANY(%s) AND position > %s"
        ).format(s=s)
        self.todos_changed_sql = SQL("SELECT * FROM {s}.todos WHERE position > %s").format(s=s)
        moves = SQL(
            "SELECT v.from_list, v.todo_id, v.position, t.list_id AS current_list "
            "FROM {s}.todo_moves v JOIN {s}.todos t ON t.id = v.todo_id WHERE v.position > %s"
        ).format(s=s)
        self.user_moves_sql = SQL("{} AND v.from_list = ANY(%s)").format(moves)
        self.moves_sql = moves
        self.joined_lists_sql = SQL(
            "SELECT DISTINCT list_id FROM {s}.list_members WHERE joined > %s"
        ).format(s=s)
        self.list_todos_sql = SQL("SELECT * FROM {s}.todos WHERE list_id = ANY(%s)").format(s=s)
        self.position_sql = SQL("SELECT max(position) AS p FROM {s}.todos_position").format(s=s)
        self.list_page_sql = SQL(
            "SELECT * FROM {s}.todos WHERE list_id = %s AND NOT deleted "
            'AND (order_key, id) > (%s::text COLLATE "C", %s) ORDER BY order_key, id LIMIT %s'
        ).format(s=s)

    # ---- shared -----------------------------------------------------------------------

    def position(self, conn: psycopg.Connection[Any]) -> int:
        return read_position(conn, self.schema_name, "todos")

    def visible(self, conn: psycopg.Connection[Any], user: str) -> set[UUID]:
        """The lists ``user`` sees: those they are a member of, not deleted, and their
        Inbox (made or not)."""
        rows = conn.execute(self.visible_sql, (user,)).fetchall()
        return {r["list_id"] for r in rows} | {inbox_id(user)}

    def lists_by_id(self, conn: psycopg.Connection[Any], ids: Iterable[UUID]) -> list[ListState]:
        return _states(conn.execute(self.lists_by_id_sql, (list(ids),)).fetchall())

    def _list_todos(
        self, conn: psycopg.Connection[Any], list_ids: Collection[UUID]
    ) -> dict[UUID, list[TodoRow]]:
        found: dict[UUID, list[TodoRow]] = {i: [] for i in list_ids}
        if list_ids:
            for r in conn.execute(self.list_todos_sql, (list(list_ids),)).fetchall():
                found[r["list_id"]].append(TodoRow.from_record(r))
        return found

    # ---- one user ---------------------------------------------------------------------

    def read_user_changes(
        self, conn: psycopg.Connection[Any], user: str, since: int
    ) -> tuple[Changed, set[UUID]]:
        """What ``user``'s changes after ``since`` are made of, and the lists they see;
        in the caller's (repeatable read) transaction."""
        position = self.position(conn)
        visible = self.visible(conn, user)
        data = Changed(since=since, position=position)
        states = _states(
            conn.execute(self.user_lists_changed_sql, (since, inbox_id(user), user)).fetchall()
        )
        data.lists = {s.id: s for s in states}
        for r in conn.execute(self.user_departures_sql, (user, since)).fetchall():
            data.departures.setdefault(user, {})[r["list_id"]] = int(r["position"])
        lost = {i for i in data.departures.get(user, {}) if i not in visible} | {
            s.id for s in states if s.deleted and user in s.members
        }
        joined = {
            s.id for s in states if s.id in visible and s.members.get(user, ("", 0))[1] > since
        }
        data.todos = [
            TodoRow.from_record(r)
            for r in conn.execute(self.user_todos_changed_sql, (list(visible), since)).fetchall()
        ]
        data.moves = [
            Move(r["from_list"], r["todo_id"], int(r["position"]), r["current_list"])
            for r in conn.execute(self.user_moves_sql, (since, list(visible | lost))).fetchall()
        ]
        data.list_todos = self._list_todos(conn, lost | joined)
        return data, visible

    def snapshot_lists(self, conn: psycopg.Connection[Any], user: str) -> list[ListState]:
        """Every list ``user`` sees, by id (their Inbox even if not made yet)."""
        visible = self.visible(conn, user)
        states = {s.id: s for s in self.lists_by_id(conn, visible)}
        inbox = inbox_id(user)
        if inbox not in states:
            states[inbox] = unmade_inbox(user)
        return [states[i] for i in sorted(states, key=str)]

    def list_page(
        self, conn: psycopg.Connection[Any], list_id: UUID, after: tuple[str, UUID], limit: int
    ) -> list[TodoRow]:
        """Live todos of ``list_id`` after (order key, id), in list order."""
        rows = conn.execute(self.list_page_sql, (list_id, after[0], after[1], limit)).fetchall()
        return [TodoRow.from_record(r) for r in rows]

    # ---- everyone (the stream hub) ----------------------------------------------------

    def read_range(self, conn: psycopg.Connection[Any], since: int) -> Changed:
        """Everything committed after ``since``, for every user, read once; in the
        caller's (repeatable read) transaction. The statements go in one pipeline: one
        round trip, not five, on the stream's latency path."""
        with conn.pipeline():
            position = conn.execute(self.position_sql)
            lists = conn.execute(self.lists_changed_sql, (since,))
            departures = conn.execute(self.departures_sql, (since,))
            todos = conn.execute(self.todos_changed_sql, (since,))
            moves = conn.execute(self.moves_sql, (since,))
            joined = conn.execute(self.joined_lists_sql, (since,))
        row = position.fetchone()
        data = Changed(since=since, position=int((row or {}).get("p") or 0))
        data.lists = {s.id: s for s in _states(lists.fetchall())}
        for r in departures.fetchall():
            data.departures.setdefault(r["user_id"], {})[r["list_id"]] = int(r["position"])
        data.todos = [TodoRow.from_record(r) for r in todos.fetchall()]
        data.moves = [
            Move(r["from_list"], r["todo_id"], int(r["position"]), r["current_list"])
            for r in moves.fetchall()
        ]
        touched = {i for lists_left in data.departures.values() for i in lists_left}
        touched |= {s.id for s in data.lists.values() if s.deleted}
        touched |= {r["list_id"] for r in joined.fetchall()}
        data.list_todos = self._list_todos(conn, touched)
        return data


def _states(records: Iterable[dict[str, Any]]) -> list[ListState]:
    return [
        ListState(
            id=r["id"],
            name=r["name"],
            owner=r["owner"],
            inbox=r["inbox"],
            deleted=r["deleted"],
            version=r["version"],
            position=int(r["position"]),
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            members={u: (str(v[0]), int(v[1])) for u, v in (r["members"] or {}).items()},
        )
        for r in records
    ]


def visible_after(user: str, visible: set[UUID], data: Changed) -> set[UUID]:
    """``visible`` (the lists ``user`` saw at ``data.since``) brought to ``data.position``:
    every membership change or deletion moves the list's row, so it is in ``data.lists``."""
    now = set(visible)
    for state in data.lists.values():
        if state.role_of(user) is not None:
            now.add(state.id)
        else:
            now.discard(state.id)
    now.add(inbox_id(user))
    return now


def group_by_position(changes: Iterable[Change]) -> list[tuple[int, list[Change]]]:
    """Sorted changes, one group per position (a stream event each)."""
    groups: dict[int, list[Change]] = defaultdict(list)
    for change in changes:
        groups[change.position].append(change)
    return sorted(groups.items())
