"""The published Kafka contract: what downstream systems code against (version 1).

Every event on topic ``todos.task`` is a CloudEvents 1.0 structured JSON message
(header ``content-type: application/cloudevents+json``) whose Kafka key is the todo id.
This module names the event types and the envelope's attributes, and parses a message
into a :class:`TodoEvent`. It imports nothing of tododb's domain, so a consumer, in this
repository or another team's, depends on this file alone (plus the CloudEvents SDK).

Compatibility: within a major version, types and attributes are only ever added; a
consumer ignores types it does not know. ``id`` is stable per event (a re-send keeps
it), so consumers dedupe on it; one todo's events keep their order within a partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from cloudevents.core.bindings.kafka import KafkaMessage, from_structured
from cloudevents.core.formats.json import JSONFormat

CONTRACT_VERSION: Final = "1.0"
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

EVENT_TYPES: Final = (
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
)

# ---- envelope attributes beyond the CloudEvents core ----------------------------------

SEQUENCE: Final = "sequence"
"""The global log position, as a string (the CloudEvents Sequence extension)."""
AGGREGATE_VERSION: Final = "aggregateversion"
"""The todo's version after this event: 1 for ``created``, then +1 per event."""
OWNER: Final = "owner"
"""The todo's owner (user id), so consumers need no state to know it."""


@dataclass(frozen=True)
class TodoEvent:
    """What a consumer gets out of a message: the envelope attributes it relies on."""

    id: str
    type: str
    todo_id: str
    owner: str
    time: datetime
    sequence: int
    version: int
    data: dict[str, Any]


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
        return TodoEvent(
            id=event.get_id(),
            type=event.get_type(),
            todo_id=str(UUID(str(event.get_subject()))),
            owner=_required_str(attributes, OWNER),
            time=time,
            sequence=int(attributes[SEQUENCE]),
            version=int(attributes[AGGREGATE_VERSION]),
            data=data,
        )
    except BadEnvelope:
        raise
    except Exception as e:  # the SDK raises several types for bad input
        raise BadEnvelope(f"not a todo CloudEvent: {type(e).__name__}: {e}") from e


def _required_str(attributes: dict[str, Any], name: str) -> str:
    value = attributes.get(name)
    if not isinstance(value, str) or not value:
        raise BadEnvelope(f"missing extension attribute {name!r}")
    return value
