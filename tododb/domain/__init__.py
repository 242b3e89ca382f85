"""The domain: the Todo and TodoList aggregates, their events and invariants. Pure Python."""

from tododb.domain.errors import (
    DomainError,
    InboxFixed,
    InvariantViolation,
    LastOwner,
    ListDeletedError,
    StepNotFound,
    TodoDeletedError,
)
from tododb.domain.event_types import (
    PUBLIC_EVENT_TYPES,
    event_id,
    event_payload,
    public_type,
)
from tododb.domain.lists import INBOX_NAME, ROLES, Role, TodoList, inbox_id
from tododb.domain.ordering import key_between
from tododb.domain.todo import DeleteReason, Priority, Status, Todo

__all__ = [
    "INBOX_NAME",
    "PUBLIC_EVENT_TYPES",
    "ROLES",
    "DeleteReason",
    "DomainError",
    "InboxFixed",
    "InvariantViolation",
    "LastOwner",
    "ListDeletedError",
    "Priority",
    "Role",
    "Status",
    "StepNotFound",
    "Todo",
    "TodoDeletedError",
    "TodoList",
    "event_id",
    "event_payload",
    "inbox_id",
    "key_between",
    "public_type",
]
