"""The Todo aggregate: every change is an event; state is what the events say.

Command methods validate and decide; the private ``@event`` methods only apply, so
replaying old events never re-runs today's validation rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from tododb.domain.errors import TodoDeletedError
from tododb.domain.invariants import (
    clean_description,
    clean_due,
    clean_priority,
    clean_tags,
    clean_title,
    clean_user_id,
)

# Namespace for ids derived from (owner, Idempotency-Key): a retried create maps to
# the same aggregate id, so the event store's uniqueness makes the retry a no-op.
IDEMPOTENT_CREATE_NAMESPACE = UUID("8f1c7d2e-3b5a-4c6d-9e8f-a1b2c3d4e5f6")


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class Status(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"


class Todo(Aggregate):
    """A user's todo. The owner is fixed at creation; only the owner may see it."""

    class Created(Aggregate.Created):
        """v2 added ``priority``; v1 events are read as priority "normal"."""

        class_version = 2
        owner: str
        title: str
        description: str
        due: datetime | None
        priority: str
        tags: list[str]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["priority"] = Priority.NORMAL.value

    class Completed(Aggregate.Event):
        """Explicit class: completion time is the event's own timestamp."""

        def apply(self, aggregate: Any) -> None:
            aggregate.status = Status.COMPLETED
            aggregate.completed_at = self.timestamp

    @event(Created)
    def __init__(
        self,
        owner: str,
        title: str,
        description: str,
        due: datetime | None,
        priority: str,
        tags: list[str],
    ) -> None:
        self.owner = owner
        self.title = title
        self.description = description
        self.due = due
        self.priority = Priority(priority)
        self.tags = list(tags)
        self.status = Status.OPEN
        self.completed_at: datetime | None = None
        self.deleted = False

    # ---- creation -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        owner: str,
        title: str,
        description: str = "",
        due: datetime | None = None,
        priority: str = Priority.NORMAL,
        tags: Iterable[str] = (),
        id: UUID | None = None,
    ) -> Todo:
        # _create() is the library's way to pass an explicit id (a deterministic one
        # for idempotent creates); uuid4 otherwise, as Aggregate.create_id() does.
        return cls._create(
            cls.Created,
            id=id or uuid4(),
            owner=clean_user_id(owner),
            title=clean_title(title),
            description=clean_description(description),
            due=None if due is None else clean_due(due),
            priority=clean_priority(str(priority)),
            tags=clean_tags(tags),
        )

    @staticmethod
    def idempotent_id(owner: str, key: str) -> UUID:
        return uuid5(IDEMPOTENT_CREATE_NAMESPACE, f"{owner}\x00{key}")

    # ---- commands -------------------------------------------------------------------

    def change_title(self, title: str) -> None:
        self._check_not_deleted()
        title = clean_title(title)
        if title != self.title:
            self._title_changed(title=title)

    def change_description(self, description: str) -> None:
        self._check_not_deleted()
        description = clean_description(description)
        if description != self.description:
            self._description_changed(description=description)

    def set_due(self, due: datetime | None) -> None:
        """``None`` clears the due date."""
        self._check_not_deleted()
        if due is None:
            if self.due is not None:
                self._due_date_cleared()
            return
        due = clean_due(due)
        if due != self.due:
            self._due_date_set(due=due)

    def change_priority(self, priority: str) -> None:
        self._check_not_deleted()
        priority = clean_priority(str(priority))
        if priority != self.priority:
            self._priority_changed(priority=priority)

    def change_tags(self, tags: Iterable[str]) -> None:
        self._check_not_deleted()
        cleaned = clean_tags(tags)
        if cleaned != self.tags:
            self._tags_changed(tags=cleaned)

    def complete(self) -> None:
        self._check_not_deleted()
        if self.status is not Status.COMPLETED:
            self.trigger_event(self.Completed)

    def reopen(self) -> None:
        self._check_not_deleted()
        if self.status is Status.COMPLETED:
            self._reopened()

    def delete(self) -> None:
        """Deleting twice is not an error; the second records nothing."""
        if not self.deleted:
            self._deleted()

    # ---- events ---------------------------------------------------------------------

    @event("TitleChanged")
    def _title_changed(self, title: str) -> None:
        self.title = title

    @event("DescriptionChanged")
    def _description_changed(self, description: str) -> None:
        self.description = description

    @event("DueDateSet")
    def _due_date_set(self, due: datetime) -> None:
        self.due = due

    @event("DueDateCleared")
    def _due_date_cleared(self) -> None:
        self.due = None

    @event("PriorityChanged")
    def _priority_changed(self, priority: str) -> None:
        self.priority = Priority(priority)

    @event("TagsChanged")
    def _tags_changed(self, tags: list[str]) -> None:
        self.tags = list(tags)

    @event("Reopened")
    def _reopened(self) -> None:
        self.status = Status.OPEN
        self.completed_at = None

    @event("Deleted")
    def _deleted(self) -> None:
        self.deleted = True

    # ---- helpers --------------------------------------------------------------------

    def _check_not_deleted(self) -> None:
        if self.deleted:
            raise TodoDeletedError(f"todo {self.id} is deleted")

    @property
    def created_at(self) -> datetime:
        return self.created_on

    @property
    def updated_at(self) -> datetime:
        return self.modified_on
