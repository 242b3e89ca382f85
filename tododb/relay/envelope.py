"""Domain event → the published contract's CloudEvent (``tododb.contract``), as a message.

``id`` is the stable event id (a re-send keeps it, so consumers can dedupe), ``subject``
and the Kafka key are the aggregate's id, the todo's or the list's (so one aggregate's
events stay in one partition, in order), ``sequence`` is the global log position,
``owner`` (the todo's, or the list's creator) saves consumers from keeping state to know
it, and ``actor`` names who caused the event (the owner for events stored before actors
were recorded). The actor is an attribute of the envelope, not a field of ``data``.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple
from uuid import UUID

import orjson
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.kafka import to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from eventsourcing.persistence import Notification

from tododb import contract
from tododb.domain import event_payload, public_type
from tododb.infra.tracing import event_context

Headers = list[tuple[str, bytes]]


class CompactJSONFormat(JSONFormat):
    """The SDK's JSON event format, written with orjson.

    The same document (RFC 3339 times with ``Z``, ``data`` inline), but about a fifth of
    the cost: the stdlib encoder with the SDK's Python ``default`` hook was a quarter of
    the relay's CPU per event. Reading, and anything but JSON data, is the SDK's own.
    """

    def write(self, event: BaseCloudEvent) -> bytes:
        data = event.get_data()
        attributes = event.get_attributes()
        content_type = attributes.get("datacontenttype", self.DEFAULT_CONTENT_TYPE)
        if not isinstance(data, dict) or not self.JSON_CONTENT_TYPE_PATTERN.match(content_type):
            return super().write(event)
        return orjson.dumps({**attributes, "data": data}, option=orjson.OPT_UTC_Z)


_FORMAT = CompactJSONFormat()
_HEADERS: dict[tuple[tuple[str, bytes], ...], Headers] = {}
"""Interned header lists: every message carries the same few, shared rather than copied
(also when a batch of messages is pickled from a decoder process). Never mutated."""


class OutgoingMessage(NamedTuple):
    """A message ready for the producer (a tuple: cheap to pass between processes)."""

    key: bytes
    value: bytes
    headers: Headers
    event_id: str
    position: int
    traceparent: str | None = None
    """The storing command's trace: the relay's publish span joins it (when exporting)."""


ERROR_MAX = 2000
"""Characters of an error kept (the exception's type and message are what matter)."""
MAX_MESSAGE_BYTES = 1_000_000
"""Larger messages are refused rather than sent: Kafka's default ``message.max.bytes``
(1 MiB with the batch overhead) would reject them on every attempt, for ever."""


class Failure(NamedTuple):
    """An event that could not become a message, as a decoder reports it (picklable)."""

    position: int
    todo_id: str
    version: int
    topic: str
    error: str

    @classmethod
    def of(cls, notification: Notification, error: BaseException) -> Failure:
        """The failure of a stored event, with the error's type and (shortened) message."""
        text = f"{type(error).__name__}: {error}"[:ERROR_MAX]
        return cls(
            notification.id,
            str(notification.originator_id),
            notification.originator_version,
            notification.topic,
            text,
        )

    @property
    def key(self) -> bytes:
        """The aggregate's Kafka key (the todo's or the list's), as its messages carry it."""
        return self.todo_id.encode()


class UnpublishedEvent(LookupError):
    """A domain event type the contract does not name: it is not published (by design,
    unlike an event that fails to encode, which is quarantined)."""


class PoisonMessage(ValueError):
    """A message no consumer (or broker) should get: it is quarantined instead."""


def contract_type(domain_event: Any) -> str:
    """The contract's type for a domain event (the domain's public name, checked)."""
    try:
        name = public_type(domain_event)
    except LookupError as e:
        raise UnpublishedEvent(str(e)) from None
    if name not in _CONTRACT_TYPES:
        raise UnpublishedEvent(f"{name} is not in contract {contract.CONTRACT_VERSION}")
    return name


_CONTRACT_TYPES = frozenset(contract.EVENT_TYPES)


def event_id_text(aggregate_id: UUID, version: int) -> str:
    """``str(domain.event_id(aggregate_id, version))``, three times cheaper.

    The same RFC 4122 name-based (SHA-1) UUID, formatted without building UUID objects:
    the relay needs one per event, and ``uuid5`` was a sixth of its decoding time.
    """
    name = aggregate_id.bytes + str(version).encode()
    digest = bytearray(hashlib.sha1(name, usedforsecurity=False).digest()[:16])  # as uuid5
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def actor_of(domain_event: Any, owner: str) -> str:
    """Who caused the event: its ``actor``, or the owner for events stored without one."""
    actor = getattr(domain_event, "actor", None)
    return actor if isinstance(actor, str) and actor else owner


def to_cloudevent(domain_event: Any, position: int, owner: str) -> CloudEvent:
    todo_id: UUID = domain_event.originator_id
    version: int = domain_event.originator_version
    data = event_payload(domain_event)
    data.pop("actor", None)
    return CloudEvent(
        {
            **_trace_attributes(domain_event),
            "id": event_id_text(todo_id, version),
            "source": contract.SOURCE,
            "type": contract_type(domain_event),
            "subject": str(todo_id),
            "time": domain_event.timestamp,
            "datacontenttype": "application/json",
            # The Sequence extension defines ``sequence`` as a String.
            contract.SEQUENCE: str(position),
            contract.AGGREGATE_VERSION: version,
            contract.OWNER: owner,
            contract.ACTOR: actor_of(domain_event, owner),
        },
        data,
    )


def _trace_attributes(domain_event: Any) -> dict[str, str]:
    """The storing command's trace context and correlation id, when the event has them."""
    context = event_context(domain_event)
    if context is None:
        return {}
    attributes = {contract.CORRELATION_ID: context.correlation_id}
    if context.traceparent:
        attributes[contract.TRACEPARENT] = context.traceparent
        if context.tracestate:
            attributes[contract.TRACESTATE] = context.tracestate
    return attributes


def to_message(domain_event: Any, position: int, owner: str) -> OutgoingMessage:
    """The event as a message; raises ``UnpublishedEvent``, ``PoisonMessage`` or whatever
    building it raised (the relay quarantines all but the first)."""
    event = to_cloudevent(domain_event, position, owner)
    message = to_structured(event, _FORMAT, key_mapper=lambda e: e.get_subject())
    key = message.key.encode() if isinstance(message.key, str) else message.key
    assert key is not None
    check_value(message.value)
    headers = tuple(message.headers.items())
    return OutgoingMessage(
        key=key,
        value=message.value,
        headers=_HEADERS.setdefault(headers, list(headers)),
        event_id=event.get_id(),
        position=position,
        traceparent=event.get_attributes().get(contract.TRACEPARENT),
    )


def check_value(value: bytes) -> None:
    """Refuse what would poison downstream: a NUL in text, which no PostgreSQL ``text``
    can hold (the domain refuses it; a raw insert may not), and oversized messages.

    The first test is a substring search, so events without a ``\\u0000`` cost nothing
    more; the exact check (not an escaped backslash followed by ``u0000``) parses.
    """
    if len(value) > MAX_MESSAGE_BYTES:
        raise PoisonMessage(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if b"\\u0000" in value and _has_nul(orjson.loads(value)):
        raise PoisonMessage("text contains a NUL character (U+0000)")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
