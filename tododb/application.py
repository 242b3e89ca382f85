"""The service layer: the library's Application, with one method per use case.

It knows aggregates and the event store, nothing of HTTP. Callers pass the acting user
so that ownership is checked here, once, for every entry point (API, CLI, tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import RecordConflictError

from tododb.domain import Todo, TodoDeletedError, event_id, event_payload, public_type
from tododb.infra.retry import Backoff


class TodoNotFound(Exception):
    """No such todo for this user (also when it belongs to someone else)."""


class TodoGone(Exception):
    """The todo existed and was deleted."""


class VersionNotFound(Exception):
    """``as_of_version`` beyond the todo's history."""


class PreconditionFailed(Exception):
    """``If-Match`` named a version that is not the current one."""

    def __init__(self, current_version: int) -> None:
        super().__init__(f"current version is {current_version}")
        self.current_version = current_version


class ConcurrencyConflict(Exception):
    """Retries ran out while other writers kept winning the next version."""


class IdempotencyKeyReused(Exception):
    """An Idempotency-Key came back with a different request body."""


@dataclass(frozen=True)
class CommandResult:
    todo: Todo
    position: int | None
    """Global log position of the todo's latest event (for read-your-writes)."""
    recorded: bool
    """False when the command changed nothing (idempotent repeat)."""


@dataclass(frozen=True)
class StoredTodoEvent:
    id: UUID
    type: str
    version: int
    position: int | None
    occurred_at: datetime
    data: dict[str, Any]


CREATE_FIELDS = ("title", "description", "due", "priority", "tags")
CONFLICT_BACKOFF = Backoff(base=0.004, cap=0.1)
"""Between retries of a lost race: the same bounds as before (0.002 * 2**attempt)."""


class TodoApplication(Application[UUID]):
    name = "todos"

    def __init__(self, env: Mapping[str, str] | None = None, conflict_retries: int = 8) -> None:
        super().__init__(env)
        self.conflict_retries = conflict_retries

    # ---- commands -------------------------------------------------------------------

    def create_todo(
        self,
        owner: str,
        *,
        title: str,
        description: str = "",
        due: datetime | None = None,
        priority: str = "normal",
        tags: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> CommandResult:
        todo_id = Todo.idempotent_id(owner, idempotency_key) if idempotency_key else None
        todo = Todo.create(
            owner=owner,
            title=title,
            description=description,
            due=due,
            priority=priority,
            tags=tags or [],
            id=todo_id,
        )
        try:
            return self._save(todo)
        except RecordConflictError:
            if todo_id is None:
                raise
            return self._replay_idempotent_create(owner, todo)

    def update_todo(
        self,
        owner: str,
        todo_id: UUID,
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Apply a partial update; ``due: None`` in ``changes`` clears the due date."""
        unknown = set(changes) - set(CREATE_FIELDS)
        if unknown:
            raise ValueError(f"unknown fields: {sorted(unknown)}")

        def apply(todo: Todo) -> None:
            if "title" in changes:
                todo.change_title(changes["title"])
            if "description" in changes:
                todo.change_description(changes["description"])
            if "due" in changes:
                todo.set_due(changes["due"])
            if "priority" in changes:
                todo.change_priority(changes["priority"])
            if "tags" in changes:
                todo.change_tags(changes["tags"])

        return self._execute(owner, todo_id, apply, expected_version)

    def complete_todo(
        self, owner: str, todo_id: UUID, *, expected_version: int | None = None
    ) -> CommandResult:
        return self._execute(owner, todo_id, Todo.complete, expected_version)

    def reopen_todo(
        self, owner: str, todo_id: UUID, *, expected_version: int | None = None
    ) -> CommandResult:
        return self._execute(owner, todo_id, Todo.reopen, expected_version)

    def delete_todo(
        self, owner: str, todo_id: UUID, *, expected_version: int | None = None
    ) -> CommandResult:
        return self._execute(owner, todo_id, Todo.delete, expected_version, allow_deleted=True)

    # ---- queries on the event store -------------------------------------------------

    def get_todo(self, owner: str, todo_id: UUID, *, version: int | None = None) -> Todo:
        """Current state, or the state as of ``version`` (time travel, also after deletion)."""
        todo = self._get_owned(owner, todo_id, version=version)
        if version is None and todo.deleted:
            raise TodoGone(str(todo_id))
        return todo

    def list_events(self, owner: str, todo_id: UUID) -> list[StoredTodoEvent]:
        """The todo's events in order; its owner may read them after deletion too."""
        events = list(self.events.get(todo_id))
        if not events or getattr(events[0], "owner", None) != owner:
            raise TodoNotFound(str(todo_id))
        positions = self._recorder_positions(todo_id)
        return [
            StoredTodoEvent(
                id=event_id(todo_id, e.originator_version),
                type=public_type(e),
                version=e.originator_version,
                position=positions.get(e.originator_version),
                occurred_at=e.timestamp,  # type: ignore[attr-defined]
                data=event_payload(e),
            )
            for e in events
        ]

    def head_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    # ---- internals ------------------------------------------------------------------

    def _get_owned(self, owner: str, todo_id: UUID, *, version: int | None = None) -> Todo:
        try:
            todo: object = self.repository.get(todo_id, version=version)
        except AggregateNotFoundError:
            raise TodoNotFound(str(todo_id)) from None
        if not isinstance(todo, Todo) or todo.owner != owner:
            raise TodoNotFound(str(todo_id))
        if version is not None and todo.version != version:
            raise VersionNotFound(f"todo {todo_id} has no version {version}")
        return todo

    def _execute(
        self,
        owner: str,
        todo_id: UUID,
        command: Callable[[Todo], None],
        expected_version: int | None,
        *,
        allow_deleted: bool = False,
    ) -> CommandResult:
        """Load, decide, append; on a lost race reload and decide again.

        With ``expected_version`` the caller has pinned the state it decided on, so a
        lost race is the caller's conflict (412), never retried here.
        """
        for attempt in range(self.conflict_retries + 1):
            if attempt:
                # Jittered backoff: racing writers spread out instead of colliding again.
                time.sleep(CONFLICT_BACKOFF.delay(attempt))
            todo = self._get_owned(owner, todo_id)
            if expected_version is not None and todo.version != expected_version:
                raise PreconditionFailed(todo.version)
            if todo.deleted and not allow_deleted:
                raise TodoGone(str(todo_id))
            try:
                command(todo)
            except TodoDeletedError:
                raise TodoGone(str(todo_id)) from None
            if not todo.pending_events:
                return CommandResult(todo, self._last_position(todo.id), recorded=False)
            try:
                return self._save(todo)
            except RecordConflictError:
                if expected_version is not None:
                    raise PreconditionFailed(self._get_owned(owner, todo_id).version) from None
        raise ConcurrencyConflict(f"todo {todo_id}: gave up after {self.conflict_retries} retries")

    def _save(self, todo: Todo) -> CommandResult:
        """Append the todo's new events; ``RecordConflictError`` if another writer won.

        When the connection drops around COMMIT the library retries the insert and meets
        the row it had just committed. So a conflict is decided from what is stored: if
        the stored events are this command's own, byte for byte, the command succeeded.
        """
        events = list(todo.pending_events)
        try:
            recordings = self.save(todo)
        except RecordConflictError:
            if not self._stored_are(events):
                raise
            return CommandResult(todo, self._last_position(todo.id), recorded=True)
        return CommandResult(todo, _last_position(recordings), recorded=True)

    def _stored_are(self, events: list[Any]) -> bool:
        """Whether the store holds exactly ``events`` at their versions (same topic, state
        and timestamp: a competing writer's event differs at least in its timestamp)."""
        first, last = events[0].originator_version, events[-1].originator_version
        stored = self.recorder.select_events(events[0].originator_id, gt=first - 1, lte=last)
        mine = [self.mapper.to_stored_event(e) for e in events]
        return [(s.originator_version, s.topic, s.state) for s in stored] == [
            (m.originator_version, m.topic, m.state) for m in mine
        ]

    def _replay_idempotent_create(self, owner: str, attempted: Todo) -> CommandResult:
        """A create with a used key returns the todo it made, if the request matches."""
        first = next(iter(self.events.get(attempted.id, lte=1)), None)
        if first is None or getattr(first, "owner", None) != owner:
            raise IdempotencyKeyReused("the Idempotency-Key belongs to another request")
        original = {f: getattr(first, f) for f in CREATE_FIELDS}
        requested = {f: getattr(attempted, f) for f in CREATE_FIELDS}
        if original != requested:
            raise IdempotencyKeyReused("the Idempotency-Key was used with a different request")
        current: object = self.repository.get(attempted.id)
        assert isinstance(current, Todo)
        return CommandResult(current, self._last_position(current.id), recorded=False)

    def _last_position(self, todo_id: UUID) -> int | None:
        last_position = getattr(self.recorder, "last_position", None)
        return None if last_position is None else last_position(todo_id)

    def _recorder_positions(self, todo_id: UUID) -> dict[int, int]:
        positions = getattr(self.recorder, "positions", None)
        return {} if positions is None else positions(todo_id)


def _last_position(recordings: list[Any]) -> int | None:
    ids = [r.notification.id for r in recordings if r.notification.id is not None]
    return max(ids) if ids else None
