"""A todo's read-model row, folded from its events by the domain's own ``apply`` logic.

The row is a snapshot of the aggregate: to apply an event we rebuild the aggregate from
the row and let the event mutate it, so the read side can never disagree with the
domain about what an event means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Snapshot
from eventsourcing.utils import get_topic

from tododb.domain import Priority, Status, Todo

TODO_TOPIC = get_topic(Todo)


class MissingRow(LookupError):
    """A todo's event with no row to apply it to: its creation was skipped or never applied.

    Raised (so the event is quarantined) rather than letting the library's ``mutate``
    fail on ``None`` with an assertion that says nothing, or none at all under ``-O``.
    """


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
        """The aggregate as of this row, through the library's own snapshot seam."""
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
                status=Status(self.status),
                completed_at=self.completed_at,
                deleted=self.deleted,
            ),
        )
        todo = snapshot.mutate(None)
        assert isinstance(todo, Todo)
        return todo


def fold_events(
    before: Mapping[UUID, TodoRow], events: Sequence[tuple[Any, int]]
) -> dict[UUID, TodoRow]:
    """Rows changed by ``(event, position)`` pairs, given the rows as they were.

    Each todo's aggregate is rebuilt from its row once and then mutated by its events in
    order; events at or below the row's version are already in it (replays are no-ops).
    """
    aggregates: dict[UUID, Todo] = {}
    positions: dict[UUID, int] = {}
    for event, position in events:
        if not isinstance(event, Todo.Event):
            continue
        todo_id = event.originator_id
        todo = aggregates.get(todo_id)
        if todo is None and todo_id in before:
            todo = before[todo_id].to_aggregate()
        if todo is None and event.originator_version > 1:
            raise MissingRow(
                f"todo {todo_id} has no row to apply version {event.originator_version} to: "
                "an earlier event of it was skipped or never applied"
            )
        if todo is not None and event.originator_version <= todo.version:
            continue
        mutated = event.mutate(todo)
        assert isinstance(mutated, Todo)
        aggregates[todo_id] = mutated
        positions[todo_id] = position
    return {i: TodoRow.from_aggregate(t, positions[i]) for i, t in aggregates.items()}
