"""The published Kafka contract: what downstream systems code against (version 1).

Every event on topic ``todos.task`` is a CloudEvents 1.0 structured JSON message
(header ``content-type: application/cloudevents+json``) whose Kafka key and ``subject``
are the id of the aggregate it is about: the todo's for ``todos.task.*`` events, the
list's for ``todos.list.*`` events. This module names the event types and the
envelope's attributes, and parses a message into a :class:`TodoEvent`. It imports
nothing of tododb's domain, so a consumer, in this repository or another team's,
depends on this file alone (plus the CloudEvents SDK).

Compatibility: within a major version, types and attributes are only ever added; a
consumer ignores types it does not know. ``id`` is stable per event (a re-send keeps
it), so consumers dedupe on it; one aggregate's events keep their order within a
partition (a todo's and its list's events are on different keys: no order between them).

History: 1.0 the ten ``todos.task.*`` types; 1.1 lists (``todos.list.*``), moves,
assignees, recurrence, steps, and the ``actor`` attribute (messages of 1.0 have none:
their actor is the owner, and ``parse_message`` says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from cloudevents.core.bindings.kafka import KafkaMessage, from_structured
from cloudevents.core.formats.json import JSONFormat

CONTRACT_VERSION: Final = "1.2"
"""Major.minor of this contract; a new major means a new topic."""

TOPIC: Final = "todos.task"
"""The default topic (``TODO_KAFKA_TOPIC``)."""
SOURCE: Final = "/todos"
CONTENT_TYPE: Final = JSONFormat.CONTENT_TYPE  # application/cloudevents+json

# ---- event types --------------------------------------------------------------------

TASK_CREATED: Final = "todos.task.created"
TASK_TITLE_CHANGED: Final = "todos.task.title_changed"
TASK_DESCRIPTION_CHANGED: Final = "todos.task.description_changed"
TASK_DUE_DATE_SET: Final = "todos.task.due_date_set"
TASK_DUE_DATE_CLEARED: Final = "todos.task.due_date_cleared"
TASK_PRIORITY_CHANGED: Final = "todos.task.priority_changed"
TASK_TAGS_CHANGED: Final = "todos.task.tags_changed"
TASK_COMPLETED: Final = "todos.task.completed"
TASK_REOPENED: Final = "todos.task.reopened"
TASK_DELETED: Final = "todos.task.deleted"
# 1.1
TASK_MOVED: Final = "todos.task.moved"
TASK_ASSIGNED: Final = "todos.task.assigned"
TASK_UNASSIGNED: Final = "todos.task.unassigned"
TASK_RECURRENCE_SET: Final = "todos.task.recurrence_set"
TASK_RECURRENCE_CLEARED: Final = "todos.task.recurrence_cleared"
TASK_STEP_ADDED: Final = "todos.task.step_added"
TASK_STEP_RENAMED: Final = "todos.task.step_renamed"
TASK_STEP_CHECKED: Final = "todos.task.step_checked"
TASK_STEP_UNCHECKED: Final = "todos.task.step_unchecked"
TASK_STEP_REMOVED: Final = "todos.task.step_removed"
TASK_STEP_MOVED: Final = "todos.task.step_moved"
# 1.2
TASK_REMINDER_SET: Final = "todos.task.reminder_set"
TASK_REMINDER_CLEARED: Final = "todos.task.reminder_cleared"

LIST_CREATED: Final = "todos.list.created"
LIST_RENAMED: Final = "todos.list.renamed"
LIST_MEMBER_SET: Final = "todos.list.member_set"
LIST_MEMBER_REMOVED: Final = "todos.list.member_removed"
LIST_DELETED: Final = "todos.list.deleted"

TASK_PREFIX: Final = "todos.task."
LIST_PREFIX: Final = "todos.list."

TASK_EVENT_TYPES: Final = (
    TASK_CREATED,
    TASK_TITLE_CHANGED,
    TASK_DESCRIPTION_CHANGED,
    TASK_DUE_DATE_SET,
    TASK_DUE_DATE_CLEARED,
    TASK_PRIORITY_CHANGED,
    TASK_TAGS_CHANGED,
    TASK_COMPLETED,
    TASK_REOPENED,
    TASK_DELETED,
    TASK_MOVED,
    TASK_ASSIGNED,
    TASK_UNASSIGNED,
    TASK_RECURRENCE_SET,
    TASK_RECURRENCE_CLEARED,
    TASK_STEP_ADDED,
    TASK_STEP_RENAMED,
    TASK_STEP_CHECKED,
    TASK_STEP_UNCHECKED,
    TASK_STEP_REMOVED,
    TASK_STEP_MOVED,
    TASK_REMINDER_SET,
    TASK_REMINDER_CLEARED,
)
LIST_EVENT_TYPES: Final = (
    LIST_CREATED,
    LIST_RENAMED,
    LIST_MEMBER_SET,
    LIST_MEMBER_REMOVED,
    LIST_DELETED,
)
EVENT_TYPES: Final = (*TASK_EVENT_TYPES, *LIST_EVENT_TYPES)

ROLES: Final = ("owner", "editor", "viewer")
"""List members' roles (``data.role`` of ``todos.list.member_set``)."""

# ---- envelope attributes beyond the CloudEvents core ----------------------------------

SEQUENCE: Final = "sequence"
"""The global log position, as a string (the CloudEvents Sequence extension)."""
AGGREGATE_VERSION: Final = "aggregateversion"
"""The aggregate's version after this event: 1 for ``created``, then +1 per event."""
OWNER: Final = "owner"
"""The owner (user id) of the todo, or of the list (who created it), so consumers need no
state to know it."""
ACTOR: Final = "actor"
"""The user whose command caused the event (1.1). For events recorded before actors
were, the owner (the only one who could act then)."""
TRACEPARENT: Final = "traceparent"
"""W3C Trace Context of the command that stored the event (1.2; the CloudEvents
Distributed Tracing extension): continue its trace. Absent on events stored before."""
TRACESTATE: Final = "tracestate"
CORRELATION_ID: Final = "correlationid"
"""The storing command's correlation id (1.2; its ``X-Correlation-Id``, else its trace
id); absent on events stored before."""


@dataclass(frozen=True)
class TodoEvent:
    """What a consumer gets out of a message: the envelope attributes it relies on.

    ``todo_id`` is the message's subject (and key): for ``todos.list.*`` events it is the
    list's id (see ``aggregate_id``, ``list_id``). ``actor`` is never empty: a 1.0 message
    has no actor attribute and gets its owner.
    """

    id: str
    type: str
    todo_id: str
    owner: str
    time: datetime
    sequence: int
    version: int
    data: dict[str, Any]
    actor: str
    traceparent: str | None = None
    tracestate: str | None = None
    correlation_id: str | None = None

    @property
    def aggregate_id(self) -> str:
        """The id of what the event is about: the todo's, or the list's."""
        return self.todo_id

    @property
    def is_list_event(self) -> bool:
        return self.type.startswith(LIST_PREFIX)

    @property
    def is_task_event(self) -> bool:
        return self.type.startswith(TASK_PREFIX)

    @property
    def list_id(self) -> str | None:
        """The list the event names: a list event's own id; for a task event, the list
        it was created in or moved to (``created`` and ``moved`` only; None otherwise,
        also for a ``created`` of 1.0, which means the owner's Inbox)."""
        if self.is_list_event:
            return self.todo_id
        value = self.data.get("list_id")
        return str(UUID(value)) if isinstance(value, str) else None


class BadEnvelope(ValueError):
    """A message that is not a well-formed todo CloudEvent (a poison message)."""


_FORMAT = JSONFormat()


def parse_message(value: bytes | None, key: bytes | None = None, headers: Any = ()) -> TodoEvent:
    """Decode and check a structured CloudEvent; ``BadEnvelope`` if anything is off."""
    if not value:
        raise BadEnvelope("empty message value")
    try:
        event = from_structured(
            KafkaMessage(headers=dict(headers or ()), key=key, value=value), _FORMAT
        )
        attributes = event.get_attributes()
        data = event.get_data()
        if not isinstance(data, dict):
            raise BadEnvelope("data is not a JSON object")
        time = event.get_time()
        if time is None:
            raise BadEnvelope("no time attribute")
        owner = _required_str(attributes, OWNER)
        actor = attributes.get(ACTOR)
        if actor is not None and (not isinstance(actor, str) or not actor):
            raise BadEnvelope(f"extension attribute {ACTOR!r} is not a user id")
        return TodoEvent(
            id=event.get_id(),
            type=event.get_type(),
            todo_id=str(UUID(str(event.get_subject()))),
            owner=owner,
            time=time,
            sequence=int(attributes[SEQUENCE]),
            version=int(attributes[AGGREGATE_VERSION]),
            data=data,
            actor=actor or owner,
            traceparent=_optional_str(attributes, TRACEPARENT),
            tracestate=_optional_str(attributes, TRACESTATE),
            correlation_id=_optional_str(attributes, CORRELATION_ID),
        )
    except BadEnvelope:
        raise
    except Exception as e:  # the SDK raises several types for bad input
        raise BadEnvelope(f"not a todo CloudEvent: {type(e).__name__}: {e}") from e


def _optional_str(attributes: dict[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    return value if isinstance(value, str) and value else None


def _required_str(attributes: dict[str, Any], name: str) -> str:
    value = attributes.get(name)
    if not isinstance(value, str) or not value:
        raise BadEnvelope(f"missing extension attribute {name!r}")
    return value
