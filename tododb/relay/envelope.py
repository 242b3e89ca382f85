"""Domain event → CloudEvents 1.0 structured JSON Kafka message, and back.

The envelope is the contract with every downstream system: ``id`` is the stable event
id (a re-send keeps it, so consumers can dedupe), ``subject`` and the Kafka key are the
todo id (so one todo's events stay in one partition, in order), ``sequence`` is the
global log position and ``owner`` saves consumers from keeping state to know it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from cloudevents.core.bindings.kafka import KafkaMessage, from_structured, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tododb.domain import event_id, event_payload, public_type

SOURCE = "/todos"
CONTENT_TYPE = JSONFormat.CONTENT_TYPE  # application/cloudevents+json
_FORMAT = JSONFormat()


@dataclass(frozen=True)
class OutgoingMessage:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event_id: str
    position: int


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


def to_cloudevent(domain_event: Any, position: int, owner: str) -> CloudEvent:
    todo_id: UUID = domain_event.originator_id
    version: int = domain_event.originator_version
    return CloudEvent(
        {
            "id": str(event_id(todo_id, version)),
            "source": SOURCE,
            "type": public_type(domain_event),
            "subject": str(todo_id),
            "time": domain_event.timestamp,
            "datacontenttype": "application/json",
            # The Sequence extension defines ``sequence`` as a String.
            "sequence": str(position),
            "aggregateversion": version,
            "owner": owner,
        },
        event_payload(domain_event),
    )


def to_message(domain_event: Any, position: int, owner: str) -> OutgoingMessage:
    event = to_cloudevent(domain_event, position, owner)
    message = to_structured(event, _FORMAT, key_mapper=lambda e: e.get_subject())
    key = message.key.encode() if isinstance(message.key, str) else message.key
    assert key is not None
    return OutgoingMessage(
        key=key,
        value=message.value,
        headers=[(name, value) for name, value in message.headers.items()],
        event_id=event.get_id(),
        position=position,
    )


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
            owner=_required_str(attributes, "owner"),
            time=time,
            sequence=int(attributes["sequence"]),
            version=int(attributes["aggregateversion"]),
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
