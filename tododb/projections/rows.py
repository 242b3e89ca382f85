"""Read-model rows, folded from events by the domain's own ``apply`` logic.

A row is a snapshot of its aggregate: to apply an event we rebuild the aggregate from
the row and let the event mutate it, so the read side can never disagree with the
domain about what an event means. Two aggregates have rows: todos (``TodoRow``) and
lists with their members (``ListRow``); each is folded from its own events alone, so a
batch (or a partition of the log) never needs another aggregate's row.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.utils import get_topic
from psycopg.types.json import Jsonb

from tododb.domain import Priority, Role, Status, Todo, TodoList

TODO_TOPIC = get_topic(Todo)
LIST_TOPIC = get_topic(TodoList)


class MissingRow(LookupError):
    """An aggregate's event with no row to apply it to: its creation was skipped or never
    applied.

    Raised (so the event is quarantined) rather than letting the library's ``mutate``
    fail on ``None`` with an assertion that says nothing, or none at all under ``-O``.
    """


@dataclass
class TodoRow:
    id: UUID
    owner: str
    list_id: UUID
    title: str
    description: str
    due: datetime | None
    priority: str
    tags: list[str]
    status: str
    order_key: str
    assignee: str | None
    recurrence: str | None
    recurrence_anchor: datetime | None
    remind_at: datetime | None
    steps: list[dict[str, Any]]
    completions: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    version: int
    deleted: bool
    position: int

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "id",
        "owner",
        "list_id",
        "title",
        "description",
        "due",
        "priority",
        "tags",
        "status",
        "order_key",
        "assignee",
        "recurrence",
        "recurrence_anchor",
        "remind_at",
        "steps",
        "completions",
        "created_at",
        "updated_at",
        "completed_at",
        "version",
        "deleted",
        "position",
    )

    @classmethod
    def from_aggregate(cls, todo: Todo, position: int) -> TodoRow:
        return cls(
            id=todo.id,
            owner=todo.owner,
            list_id=todo.list_id,
            title=todo.title,
            description=todo.description,
            due=todo.due,
            priority=Priority(todo.priority).value,
            tags=list(todo.tags),
            status=Status(todo.status).value,
            order_key=todo.order_key,
            assignee=todo.assignee,
            recurrence=todo.recurrence,
            recurrence_anchor=todo.recurrence_anchor,
            remind_at=todo.remind_at,
            steps=copy.deepcopy(todo.steps),
            completions=todo.completions,
            created_at=todo.created_at,
            updated_at=todo.updated_at,
            completed_at=todo.completed_at,
            version=todo.version,
            deleted=todo.deleted,
            position=position,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TodoRow:
        return cls(**{f.name: record[f.name] for f in fields(cls)})

    def values(self) -> tuple[Any, ...]:
        """The column values in ``COLUMNS`` order, adapted for PostgreSQL (steps as jsonb)."""
        return tuple(
            Jsonb(self.steps) if name == "steps" else getattr(self, name) for name in self.COLUMNS
        )

    def to_aggregate(self) -> Todo:
        """The aggregate as of this row, through the library's own snapshot seam: the
        state sets every attribute ``Todo.__init__`` sets."""
        snapshot = Snapshot(
            originator_id=self.id,
            originator_version=self.version,
            timestamp=self.updated_at,
            topic=TODO_TOPIC,
            state=dict(
                _created_on=self.created_at,
                _modified_on=self.updated_at,
                owner=self.owner,
                title=self.title,
                description=self.description,
                due=self.due,
                priority=Priority(self.priority),
                tags=list(self.tags),
                list_id=self.list_id,
                order_key=self.order_key,
                assignee=self.assignee,
                recurrence=self.recurrence,
                recurrence_anchor=self.recurrence_anchor,
                remind_at=self.remind_at,
                steps=copy.deepcopy(self.steps),  # step events change the dicts in place
                completions=self.completions,
                status=Status(self.status),
                completed_at=self.completed_at,
                deleted=self.deleted,
            ),
        )
        todo = snapshot.mutate(None)
        assert isinstance(todo, Todo)
        return todo


@dataclass
class ListRow:
    """A list's row; its members go to a table of their own (one row per member)."""

    id: UUID
    name: str
    owner: str
    inbox: bool
    deleted: bool
    version: int
    position: int
    created_at: datetime
    updated_at: datetime
    members: dict[str, str] = field(default_factory=dict)
    """user id → role."""

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "id",
        "name",
        "owner",
        "inbox",
        "deleted",
        "version",
        "position",
        "created_at",
        "updated_at",
    )

    @classmethod
    def from_aggregate(cls, todo_list: TodoList, position: int) -> ListRow:
        return cls(
            id=todo_list.id,
            name=todo_list.name,
            owner=todo_list.owner,
            inbox=todo_list.inbox,
            deleted=todo_list.deleted,
            version=todo_list.version,
            position=position,
            created_at=todo_list.created_at,
            updated_at=todo_list.updated_at,
            members={user: Role(role).value for user, role in todo_list.members.items()},
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any], members: dict[str, str]) -> ListRow:
        return cls(**{name: record[name] for name in cls.COLUMNS}, members=dict(members))

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.COLUMNS)

    def to_aggregate(self) -> TodoList:
        """The aggregate as of this row: the state sets every attribute
        ``TodoList.__init__`` sets."""
        snapshot = Snapshot(
            originator_id=self.id,
            originator_version=self.version,
            timestamp=self.updated_at,
            topic=LIST_TOPIC,
            state=dict(
                _created_on=self.created_at,
                _modified_on=self.updated_at,
                owner=self.owner,
                name=self.name,
                inbox=self.inbox,
                members={user: Role(role) for user, role in self.members.items()},
                deleted=self.deleted,
            ),
        )
        todo_list = snapshot.mutate(None)
        assert isinstance(todo_list, TodoList)
        return todo_list


Row = TodoRow | ListRow

def aggregate_class(event: Any) -> type[Aggregate] | None:
    """Which read-model aggregate ``event`` belongs to (None: none the views fold)."""
    if isinstance(event, Todo.Event):
        return Todo
    if isinstance(event, TodoList.Event):
        return TodoList
    return None


def fold_events(before: Mapping[UUID, Row], events: Sequence[tuple[Any, int]]) -> dict[UUID, Row]:
    """Rows changed by ``(event, position)`` pairs, given the rows as they were.

    Each aggregate (todo or list) is rebuilt from its row once and then mutated by its
    events in order; events at or below the row's version are already in it (replays
    are no-ops).
    """
    aggregates: dict[UUID, Aggregate] = {}
    positions: dict[UUID, int] = {}
    for event, position in events:
        cls = aggregate_class(event)
        if cls is None:
            continue
        aggregate_id = event.originator_id
        aggregate = aggregates.get(aggregate_id)
        if aggregate is None and aggregate_id in before:
            aggregate = before[aggregate_id].to_aggregate()
        if aggregate is None and event.originator_version > 1:
            raise MissingRow(
                f"{cls.__name__} {aggregate_id} has no row to apply version "
                f"{event.originator_version} to: an earlier event of it was skipped or "
                "never applied"
            )
        if aggregate is not None and event.originator_version <= aggregate.version:
            continue
        mutated = event.mutate(aggregate)
        if not isinstance(mutated, cls):
            raise TypeError(f"{type(event).__name__} made a {type(mutated).__name__}")
        aggregates[aggregate_id] = mutated
        positions[aggregate_id] = position
    return {i: _row_of(a, positions[i]) for i, a in aggregates.items()}


def _row_of(aggregate: Aggregate, position: int) -> Row:
    if isinstance(aggregate, Todo):
        return TodoRow.from_aggregate(aggregate, position)
    assert isinstance(aggregate, TodoList)
    return ListRow.from_aggregate(aggregate, position)
