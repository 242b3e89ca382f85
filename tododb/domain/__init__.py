"""The domain: the Todo aggregate, its events and invariants. Pure Python, no I/O."""

from tododb.domain.errors import (
    DomainError,
    InvariantViolation,
    TodoDeletedError,
)
from tododb.domain.event_types import (
    PUBLIC_EVENT_TYPES,
    event_id,
    event_payload,
    public_type,
)
from tododb.domain.todo import Priority, Status, Todo

__all__ = [
    "PUBLIC_EVENT_TYPES",
    "DomainError",
    "InvariantViolation",
    "Priority",
    "Status",
    "Todo",
    "TodoDeletedError",
    "event_id",
    "event_payload",
    "public_type",
]
