"""A todo's read-model row, folded from its events by the domain's own ``apply`` logic.

The row is a snapshot of the aggregate: to apply an event we rebuild the aggregate from
the row and let the event mutate it, so the read side can never disagree with the
domain about what an event means.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

from tododb.domain import Priority, Status, Todo


@dataclass
class TodoRow:
    id: UUID
    owner: str
    title: str
    description: str
    due: datetime | None
    priority: str
    tags: list[str]
    status: str
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    version: int
    deleted: bool
    position: int

    COLUMNS = (
        "id",
        "owner",
        "title",
        "description",
        "due",
        "priority",
        "tags",
        "status",
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
            title=todo.title,
            description=todo.description,
            due=todo.due,
            priority=Priority(todo.priority).value,
            tags=list(todo.tags),
            status=Status(todo.status).value,
            created_at=todo.created_at,
            updated_at=todo.updated_at,
            completed_at=todo.completed_at,
            version=todo.version,
            deleted=todo.deleted,
            position=position,
        )

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TodoRow:
        return cls(**{f.name: record[f.name] for f in fields(cls)})

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.COLUMNS)

    def to_aggregate(self) -> Todo:
        todo: Todo = object.__new__(Todo)
        todo.__dict__.update(
            _id=self.id,
            _version=self.version,
            _created_on=self.created_at,
            _modified_on=self.updated_at,
            _pending_events=[],
            owner=self.owner,
            title=self.title,
            description=self.description,
            due=self.due,
            priority=Priority(self.priority),
            tags=list(self.tags),
            status=Status(self.status),
            completed_at=self.completed_at,
            deleted=self.deleted,
        )
        return todo


def fold(row: TodoRow | None, domain_event: Any, position: int) -> TodoRow | None:
    """The row after ``domain_event``; ``None`` if the event does not concern todos.

    Events at or below the row's version are already in it (replays are no-ops).
    """
    if not isinstance(domain_event, Todo.Event):
        return row
    if row is not None and domain_event.originator_version <= row.version:
        return row
    todo = domain_event.mutate(None if row is None else row.to_aggregate())
    assert isinstance(todo, Todo)
    return TodoRow.from_aggregate(todo, position)
