"""The Todo aggregate: every change is an event; state is what the events say.

Command methods validate and decide; the private ``@event`` methods only apply, so
replaying old events never re-runs today's validation rules. Every event names its
``actor``, the user whose command caused it; events stored before actors were recorded
(class version 1) say None, which means the todo's owner, the only one who could act.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from tododb.domain.errors import InvariantViolation, StepNotFound, TodoDeletedError
from tododb.domain.invariants import (
    STEPS_MAX,
    clean_description,
    clean_due,
    clean_priority,
    clean_step_text,
    clean_tags,
    clean_title,
    clean_user_id,
)
from tododb.domain.lists import inbox_id
from tododb.domain.ordering import creation_key
from tododb.domain.recurrence import clean_recurrence, next_occurrence

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


class DeleteReason(StrEnum):
    DELETED = "deleted"
    LIST_DELETED = "list_deleted"


class Todo(Aggregate):
    """A todo in a list. Who may see or change it is the list's business (its members)."""

    class Event(Aggregate.Event):
        """v2 added ``actor``; v1 events were all their owner's own."""

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["actor"] = None

    class Created(Event, Aggregate.Created):
        """v2 added ``priority``; v3 the list, order, actor, assignee and recurrence.

        A todo created before lists existed belongs to its owner's Inbox, at a place
        fixed by its creation time, as if it had been created there."""

        class_version = 3
        owner: str
        title: str
        description: str
        due: datetime | None
        priority: str
        tags: list[str]
        list_id: UUID
        order_key: str
        actor: str | None
        assignee: str | None
        recurrence: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["priority"] = Priority.NORMAL.value

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["list_id"] = inbox_id(state["owner"])
            state["order_key"] = creation_key(state["timestamp"], state["originator_id"])
            state["actor"] = state["owner"]
            state["assignee"] = None
            state["recurrence"] = None

    class Completed(Event):
        """Completion time is the event's own timestamp. On a recurring todo, ``next_due``
        is the next occurrence: the todo stays open, due then (v2 added it and ``actor``)."""

        actor: str | None
        next_due: datetime | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["actor"] = None
            state["next_due"] = None

        def apply(self, aggregate: Any) -> None:
            aggregate.completed_at = self.timestamp
            if self.next_due is None:
                aggregate.status = Status.COMPLETED
            else:
                aggregate.due = self.next_due
                aggregate.completions += 1

    class Deleted(Event):
        """v2 added ``actor`` and ``reason`` (the todo's own deletion, or its list's)."""

        actor: str | None
        reason: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["actor"] = None
            state["reason"] = DeleteReason.DELETED.value

        def apply(self, aggregate: Any) -> None:
            aggregate.deleted = True

    @event(Created)
    def __init__(
        self,
        owner: str,
        title: str,
        description: str,
        due: datetime | None,
        priority: str,
        tags: list[str],
        list_id: UUID,
        order_key: str,
        actor: str | None,
        assignee: str | None,
        recurrence: str | None,
    ) -> None:
        self.owner = owner
        self.title = title
        self.description = description
        self.due = due
        self.priority = Priority(priority)
        self.tags = list(tags)
        self.list_id = list_id
        self.order_key = order_key
        self.assignee = assignee
        self.recurrence = recurrence
        self.recurrence_anchor: datetime | None = due if recurrence else None
        self.remind_at: datetime | None = None
        self.steps: list[dict[str, Any]] = []
        self.completions = 0
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
        list_id: UUID | None = None,
        assignee: str | None = None,
        recurrence: str | None = None,
        actor: str | None = None,
        id: UUID | None = None,
        now: datetime | None = None,
    ) -> Todo:
        """``list_id`` defaults to the owner's Inbox; ``actor`` to the owner. The caller
        has checked that ``assignee`` is a member of the list."""
        owner = clean_user_id(owner)
        todo_id = id or uuid4()
        due = None if due is None else clean_due(due)
        # _create() is the library's way to pass an explicit id (a deterministic one
        # for idempotent creates); uuid4 otherwise, as Aggregate.create_id() does.
        return cls._create(
            cls.Created,
            id=todo_id,
            owner=owner,
            title=clean_title(title),
            description=clean_description(description),
            due=due,
            priority=clean_priority(str(priority)),
            tags=clean_tags(tags),
            list_id=list_id or inbox_id(owner),
            order_key=creation_key(now or cls.Event.create_timestamp(), todo_id),
            actor=actor or owner,
            assignee=None if assignee is None else clean_user_id(assignee),
            recurrence=None if recurrence is None else clean_recurrence(recurrence, due),
        )

    @staticmethod
    def idempotent_id(owner: str, key: str) -> UUID:
        return uuid5(IDEMPOTENT_CREATE_NAMESPACE, f"{owner}\x00{key}")

    # ---- commands -------------------------------------------------------------------

    def change_title(self, title: str, *, actor: str | None = None) -> None:
        self._check_not_deleted()
        title = clean_title(title)
        if title != self.title:
            self._title_changed(title=title, actor=actor)

    def change_description(self, description: str, *, actor: str | None = None) -> None:
        self._check_not_deleted()
        description = clean_description(description)
        if description != self.description:
            self._description_changed(description=description, actor=actor)

    def set_due(self, due: datetime | None, *, actor: str | None = None) -> None:
        """``None`` clears the due date (a recurring todo's rule must be cleared first)."""
        self._check_not_deleted()
        if due is None:
            if self.recurrence is not None:
                raise InvariantViolation("due", "a recurring todo needs its due date")
            if self.due is not None:
                self._due_date_cleared(actor=actor)
            return
        due = clean_due(due)
        if due != self.due:
            self._due_date_set(due=due, actor=actor)

    def change_priority(self, priority: str, *, actor: str | None = None) -> None:
        self._check_not_deleted()
        priority = clean_priority(str(priority))
        if priority != self.priority:
            self._priority_changed(priority=priority, actor=actor)

    def change_tags(self, tags: Iterable[str], *, actor: str | None = None) -> None:
        self._check_not_deleted()
        cleaned = clean_tags(tags)
        if cleaned != self.tags:
            self._tags_changed(tags=cleaned, actor=actor)

    def complete(self, *, actor: str | None = None, now: datetime | None = None) -> None:
        """On a recurring todo, records the completion and rolls the due date on; the
        todo completes for good when the rule has no next occurrence."""
        self._check_not_deleted()
        if self.status is Status.COMPLETED:
            return
        next_due = None
        if self.recurrence is not None and self.due is not None:
            anchor = self.recurrence_anchor or self.due
            when = now or self.Event.create_timestamp()
            next_due = next_occurrence(self.recurrence, anchor, self.due, when)
        self.trigger_event(self.Completed, actor=actor, next_due=next_due)

    def reopen(self, *, actor: str | None = None) -> None:
        self._check_not_deleted()
        if self.status is Status.COMPLETED:
            self._reopened(actor=actor)

    def delete(self, *, actor: str | None = None, reason: str = DeleteReason.DELETED) -> None:
        """Deleting twice is not an error; the second records nothing."""
        if not self.deleted:
            self.trigger_event(self.Deleted, actor=actor, reason=DeleteReason(reason).value)

    def move(self, list_id: UUID, order_key: str, *, actor: str | None = None) -> None:
        """To ``order_key`` in ``list_id`` (the caller computed the key between the
        neighbours and checked the actor may edit both lists)."""
        self._check_not_deleted()
        if (list_id, order_key) != (self.list_id, self.order_key):
            self._moved(list_id=list_id, order_key=order_key, actor=actor)

    def assign(self, assignee: str | None, *, actor: str | None = None) -> None:
        """``None`` unassigns. The caller has checked ``assignee`` is a list member."""
        self._check_not_deleted()
        if assignee is None:
            if self.assignee is not None:
                self._unassigned(actor=actor)
            return
        assignee = clean_user_id(assignee)
        if assignee != self.assignee:
            self._assigned(assignee=assignee, actor=actor)

    def set_recurrence(self, rule: str | None, *, actor: str | None = None) -> None:
        """``None`` stops the todo recurring."""
        self._check_not_deleted()
        if rule is None:
            if self.recurrence is not None:
                self._recurrence_cleared(actor=actor)
            return
        rule = clean_recurrence(rule, self.due)
        if rule != self.recurrence:
            self._recurrence_set(rule=rule, actor=actor)

    def set_reminder(self, remind_at: datetime | None, *, actor: str | None = None) -> None:
        """Remind at ``remind_at`` (an instant); ``None`` clears the reminder."""
        self._check_not_deleted()
        if remind_at is None:
            if self.remind_at is not None:
                self._reminder_cleared(actor=actor)
            return
        remind_at = clean_due(remind_at, field="remind_at")
        if remind_at != self.remind_at:
            self._reminder_set(remind_at=remind_at, actor=actor)

    # ---- steps ----------------------------------------------------------------------

    def add_step(self, text: str, *, step_id: UUID | None = None, actor: str | None = None) -> UUID:
        self._check_not_deleted()
        if len(self.steps) >= STEPS_MAX:
            raise InvariantViolation("steps", f"a todo has at most {STEPS_MAX} steps")
        new_id = step_id or uuid4()
        if any(s["id"] == str(new_id) for s in self.steps):
            raise InvariantViolation("step_id", "is already a step of this todo")
        self._step_added(step_id=str(new_id), text=clean_step_text(text), actor=actor)
        return new_id

    def rename_step(self, step_id: UUID, text: str, *, actor: str | None = None) -> None:
        step = self._step(step_id)
        text = clean_step_text(text)
        if text != step["text"]:
            self._step_renamed(step_id=str(step_id), text=text, actor=actor)

    def check_step(self, step_id: UUID, done: bool = True, *, actor: str | None = None) -> None:
        step = self._step(step_id)
        if step["done"] != done:
            if done:
                self._step_checked(step_id=str(step_id), actor=actor)
            else:
                self._step_unchecked(step_id=str(step_id), actor=actor)

    def remove_step(self, step_id: UUID, *, actor: str | None = None) -> None:
        self._step(step_id)
        self._step_removed(step_id=str(step_id), actor=actor)

    def move_step(self, step_id: UUID, index: int, *, actor: str | None = None) -> None:
        """To ``index`` in the checklist (clamped to its ends)."""
        self._step(step_id)
        index = max(0, min(index, len(self.steps) - 1))
        if self.steps[index]["id"] != str(step_id):
            self._step_moved(step_id=str(step_id), index=index, actor=actor)

    def _step(self, step_id: UUID) -> dict[str, Any]:
        self._check_not_deleted()
        for step in self.steps:
            if step["id"] == str(step_id):
                return step
        raise StepNotFound(f"todo {self.id} has no step {step_id}")

    # ---- events ---------------------------------------------------------------------

    @event("TitleChanged")
    def _title_changed(self, title: str, actor: str | None) -> None:
        self.title = title

    @event("DescriptionChanged")
    def _description_changed(self, description: str, actor: str | None) -> None:
        self.description = description

    @event("DueDateSet")
    def _due_date_set(self, due: datetime, actor: str | None) -> None:
        self.due = due
        if self.recurrence is not None:
            self.recurrence_anchor = due  # moving a recurring todo moves its schedule

    @event("DueDateCleared")
    def _due_date_cleared(self, actor: str | None) -> None:
        self.due = None

    @event("PriorityChanged")
    def _priority_changed(self, priority: str, actor: str | None) -> None:
        self.priority = Priority(priority)

    @event("TagsChanged")
    def _tags_changed(self, tags: list[str], actor: str | None) -> None:
        self.tags = list(tags)

    @event("Reopened")
    def _reopened(self, actor: str | None) -> None:
        self.status = Status.OPEN
        self.completed_at = None

    @event("Moved")
    def _moved(self, list_id: UUID, order_key: str, actor: str | None) -> None:
        self.list_id = list_id
        self.order_key = order_key

    @event("Assigned")
    def _assigned(self, assignee: str, actor: str | None) -> None:
        self.assignee = assignee

    @event("Unassigned")
    def _unassigned(self, actor: str | None) -> None:
        self.assignee = None

    @event("RecurrenceSet")
    def _recurrence_set(self, rule: str, actor: str | None) -> None:
        self.recurrence = rule
        self.recurrence_anchor = self.due

    @event("RecurrenceCleared")
    def _recurrence_cleared(self, actor: str | None) -> None:
        self.recurrence = None
        self.recurrence_anchor = None

    @event("ReminderSet")
    def _reminder_set(self, remind_at: datetime, actor: str | None) -> None:
        self.remind_at = remind_at

    @event("ReminderCleared")
    def _reminder_cleared(self, actor: str | None) -> None:
        self.remind_at = None

    @event("StepAdded")
    def _step_added(self, step_id: str, text: str, actor: str | None) -> None:
        self.steps.append({"id": step_id, "text": text, "done": False})

    @event("StepRenamed")
    def _step_renamed(self, step_id: str, text: str, actor: str | None) -> None:
        self._find(step_id)["text"] = text

    @event("StepChecked")
    def _step_checked(self, step_id: str, actor: str | None) -> None:
        self._find(step_id)["done"] = True

    @event("StepUnchecked")
    def _step_unchecked(self, step_id: str, actor: str | None) -> None:
        self._find(step_id)["done"] = False

    @event("StepRemoved")
    def _step_removed(self, step_id: str, actor: str | None) -> None:
        self.steps.remove(self._find(step_id))

    @event("StepMoved")
    def _step_moved(self, step_id: str, index: int, actor: str | None) -> None:
        step = self._find(step_id)
        self.steps.remove(step)
        self.steps.insert(index, step)

    # ---- helpers --------------------------------------------------------------------

    def detached_copy(self) -> Todo:
        """This todo as it is, sharing no mutable state (steps change in place) and no
        pending events: what a process keeps of a todo it has just stored."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.steps = [dict(step) for step in self.steps]
        clone.__dict__["_pending_events"] = []
        return clone

    def _find(self, step_id: str) -> dict[str, Any]:
        return next(s for s in self.steps if s["id"] == step_id)

    def _check_not_deleted(self) -> None:
        if self.deleted:
            raise TodoDeletedError(f"todo {self.id} is deleted")

    @property
    def created_at(self) -> datetime:
        return self.created_on

    @property
    def updated_at(self) -> datetime:
        return self.modified_on
