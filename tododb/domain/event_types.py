"""Public names and payloads of the Todo events, as the outside world sees them.

Stored events keep the library's Python topics; these ``<domain>.<entity>.<action>``
names are what the API shows; the relay publishes the same names, checked against the
Kafka contract (``tododb.contract``, which a unit test keeps equal to this table).
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID, uuid5

from tododb.domain.lists import TodoList
from tododb.domain.todo import Todo

PUBLIC_EVENT_TYPES: dict[type[Any], str] = {
    Todo.Created: "todos.task.created",
    Todo.TitleChanged: "todos.task.title_changed",  # type: ignore[attr-defined]
    Todo.DescriptionChanged: "todos.task.description_changed",  # type: ignore[attr-defined]
    Todo.DueDateSet: "todos.task.due_date_set",  # type: ignore[attr-defined]
    Todo.DueDateCleared: "todos.task.due_date_cleared",  # type: ignore[attr-defined]
    Todo.PriorityChanged: "todos.task.priority_changed",  # type: ignore[attr-defined]
    Todo.TagsChanged: "todos.task.tags_changed",  # type: ignore[attr-defined]
    Todo.Completed: "todos.task.completed",
    Todo.Reopened: "todos.task.reopened",  # type: ignore[attr-defined]
    Todo.Deleted: "todos.task.deleted",
    Todo.Moved: "todos.task.moved",  # type: ignore[attr-defined]
    Todo.Assigned: "todos.task.assigned",  # type: ignore[attr-defined]
    Todo.Unassigned: "todos.task.unassigned",  # type: ignore[attr-defined]
    Todo.RecurrenceSet: "todos.task.recurrence_set",  # type: ignore[attr-defined]
    Todo.RecurrenceCleared: "todos.task.recurrence_cleared",  # type: ignore[attr-defined]
    Todo.ReminderSet: "todos.task.reminder_set",  # type: ignore[attr-defined]
    Todo.ReminderCleared: "todos.task.reminder_cleared",  # type: ignore[attr-defined]
    Todo.StepAdded: "todos.task.step_added",  # type: ignore[attr-defined]
    Todo.StepRenamed: "todos.task.step_renamed",  # type: ignore[attr-defined]
    Todo.StepChecked: "todos.task.step_checked",  # type: ignore[attr-defined]
    Todo.StepUnchecked: "todos.task.step_unchecked",  # type: ignore[attr-defined]
    Todo.StepRemoved: "todos.task.step_removed",  # type: ignore[attr-defined]
    Todo.StepMoved: "todos.task.step_moved",  # type: ignore[attr-defined]
    TodoList.Created: "todos.list.created",
    TodoList.Renamed: "todos.list.renamed",  # type: ignore[attr-defined]
    TodoList.MemberSet: "todos.list.member_set",  # type: ignore[attr-defined]
    TodoList.MemberRemoved: "todos.list.member_removed",  # type: ignore[attr-defined]
    TodoList.Deleted: "todos.list.deleted",  # type: ignore[attr-defined]
}

_ENVELOPE_FIELDS = frozenset(
    # ``_meta``: the storing command's context (correlation, causation, trace), not a fact.
    {"originator_id", "originator_version", "timestamp", "originator_topic", "_meta"}
)


def public_type(domain_event: Any) -> str:
    try:
        return PUBLIC_EVENT_TYPES[type(domain_event)]
    except KeyError:
        raise LookupError(f"no public name for {type(domain_event).__qualname__}") from None


def event_id(aggregate_id: UUID, version: int) -> UUID:
    """A stable id per (aggregate, version): the same event re-sent keeps its id."""
    return uuid5(aggregate_id, str(version))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def event_payload(domain_event: Any) -> dict[str, Any]:
    """The event's own facts, JSON-ready, without the store's envelope fields."""
    return {
        key: _jsonable(value)
        for key, value in vars(domain_event).items()
        if key not in _ENVELOPE_FIELDS
    }
