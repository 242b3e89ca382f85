"""Membership history and todo moves, from the same events the rows are folded from.

Delta sync (``tododb.projections.changes``) must know, for a position, which lists a
user joined or left after it and which todos left a list after it: the rows alone only
hold the current state. Each fact is the position of the event itself, so a rebuild
(whatever its batches or partitions) writes exactly what the live fold wrote; each is
written from its own aggregate's events (a list's for memberships, a todo's for moves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from tododb.domain import Todo, TodoList
from tododb.projections.rows import ListRow, Row, TodoRow


@dataclass
class History:
    joins: dict[tuple[UUID, str], int] = field(default_factory=dict)
    """(list, user) → position of the event that made them a member (the last such)."""
    departures: dict[tuple[UUID, str], int] = field(default_factory=dict)
    """(list, user) → position of the event that ended their membership (the last)."""
    moves: dict[tuple[UUID, UUID], int] = field(default_factory=dict)
    """(list left, todo) → position of the move (the last)."""


def walk_history(before: Mapping[UUID, Row], events: Sequence[tuple[Any, int]]) -> History:
    """The joins, departures and moves ``(event, position)`` pairs record, given the rows
    as they were (events at or below a row's version are already in it: skipped, as the
    fold skips them)."""
    history = History()
    versions: dict[UUID, int] = {}
    members: dict[UUID, set[str]] = {}
    homes: dict[UUID, UUID] = {}
    for event, position in events:
        aggregate_id = event.originator_id
        if aggregate_id not in versions:
            row = before.get(aggregate_id)
            versions[aggregate_id] = row.version if row is not None else 0
            if isinstance(row, ListRow):
                members[aggregate_id] = set(row.members)
            elif isinstance(row, TodoRow):
                homes[aggregate_id] = row.list_id
        if event.originator_version <= versions[aggregate_id]:
            continue
        versions[aggregate_id] = event.originator_version
        if isinstance(event, TodoList.Event):
            _list_event(history, members.setdefault(aggregate_id, set()), event, position)
        elif isinstance(event, Todo.Event):
            new_home = getattr(event, "list_id", None)
            if not isinstance(new_home, UUID):
                continue
            old_home = homes.get(aggregate_id)
            if old_home is not None and old_home != new_home:
                history.moves[(old_home, aggregate_id)] = position
            homes[aggregate_id] = new_home
    return history


def _list_event(history: History, members: set[str], event: Any, position: int) -> None:
    list_id = event.originator_id
    if isinstance(event, TodoList.Created):
        members.clear()
        members.add(event.owner)
        history.joins[(list_id, event.owner)] = position
        return
    user = getattr(event, "user", None)
    if not isinstance(user, str):
        return
    name = type(event).__name__
    if name == "MemberSet" and user not in members:
        members.add(user)
        history.joins[(list_id, user)] = position
    elif name == "MemberRemoved" and user in members:
        members.discard(user)
        history.departures[(list_id, user)] = position
