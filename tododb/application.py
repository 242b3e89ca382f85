"""The service layer: the library's Application, with one method per use case.

It knows aggregates and the event store, nothing of HTTP. Callers pass the acting user
(``actor``) so that access is checked here, once, for every entry point (API, CLI, tests).

Access follows list membership. A user's own Inbox is theirs with no read (its id is
derived from the user); any other list is read from the event store, so losing membership
takes effect at once. A non-member is told "not found", exactly as for an unknown id; a
member whose role does not allow the command is told ``Forbidden``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Protocol, Required, TypedDict, TypeVar, Unpack, cast
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    Notification,
    RecordConflictError,
    Recording,
    StoredEvent,
)

from tododb.domain import (
    InvariantViolation,
    ListDeletedError,
    Role,
    StepNotFound,
    Todo,
    TodoDeletedError,
    TodoList,
    event_id,
    event_payload,
    inbox_id,
    key_between,
    public_type,
)
from tododb.domain.invariants import clean_user_id
from tododb.domain.ordering import creation_key
from tododb.domain.todo import DeleteReason
from tododb.infra.command_cache import CommandCache
from tododb.infra.retry import Backoff
from tododb.infra.tracing import append_span, event_context, exporting, stamp


class TodoNotFound(Exception):
    """No such todo for this user (also when the user may not see it)."""


class ListNotFound(Exception):
    """No such list for this user (also when the user is not a member, or it is deleted)."""


class Forbidden(Exception):
    """The user is a member, but their role does not allow the command."""


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


class _StaleCopy(Exception):
    """This process's copy of a todo is behind the store (another process wrote it)."""


class IdempotencyKeyReused(Exception):
    """An Idempotency-Key came back with a different request body."""


T = TypeVar("T")


class Offload(Protocol):
    """Runs a blocking call on a worker thread (the API's: Starlette's thread pool)."""

    def __call__(self, func: Callable[[], T], /) -> Awaitable[T]: ...


class AsyncAppender(Protocol):
    """An event store that can append on the event loop (``tododb.eventstore``'s, where
    its appends go through group commit)."""

    groups_commits: bool

    async def append_async(self, stored_events: Sequence[StoredEvent]) -> list[int]: ...


class NewTodo(TypedDict, total=False):
    """``create_todo``'s fields, for the callers that pass them on."""

    title: Required[str]
    list_id: UUID | None
    description: str
    due: datetime | None
    priority: str
    tags: list[str] | None
    assignee: str | None
    recurrence: str | None
    remind_at: datetime | None
    idempotency_key: str | None


class OrderIndex(Protocol):
    """Neighbouring order keys of a list's live todos (a read model: may be stale)."""

    def next_key(self, list_id: UUID, key: str) -> str | None:
        """The smallest key greater than ``key`` among the list's live todos."""
        ...

    def previous_key(self, list_id: UUID, key: str) -> str | None:
        """The largest key less than ``key`` among the list's live todos."""
        ...


@dataclass(frozen=True)
class CommandResult:
    todo: Todo
    position: int | None
    """Global log position of the todo's latest event (for read-your-writes)."""
    recorded: bool
    """False when the command changed nothing (idempotent repeat)."""


@dataclass(frozen=True)
class ListResult:
    todo_list: TodoList
    position: int | None
    """Global log position of the command's last event (for read-your-writes)."""
    recorded: bool


@dataclass(frozen=True)
class StoredTodoEvent:
    id: UUID
    type: str
    version: int
    position: int | None
    occurred_at: datetime
    actor: str
    data: dict[str, Any]
    metadata: dict[str, str] | None
    """The storing command's correlation id, causation id and trace context (None on
    events stored before they were recorded)."""


@dataclass(frozen=True)
class Access:
    """The actor's role on a list, and who the list's members are."""

    role: Role
    list_id: UUID
    todo_list: TodoList | None
    """None for the actor's own Inbox, which is known without a read."""
    actor: str

    def is_member(self, user: str) -> bool:
        if self.todo_list is None:
            return user == self.actor
        return self.todo_list.role_of(user) is not None


CREATE_FIELDS = ("title", "description", "due", "priority", "tags")
REPLAYED_FIELDS = (*CREATE_FIELDS, "list_id", "assignee", "recurrence")
"""What a retried create must repeat for its Idempotency-Key to return the first todo."""
PATCH_FIELDS = (*CREATE_FIELDS, "assignee", "recurrence", "remind_at")
NULLABLE_FIELDS = frozenset({"due", "assignee", "recurrence", "remind_at"})
CONFLICT_BACKOFF = Backoff(base=0.004, cap=0.1)
"""Between retries of a lost race: the same bounds as before (0.002 * 2**attempt)."""
KNOWN_INBOXES_MAX = 100_000
"""Users whose Inbox this process knows exists (beyond it, the oldest are forgotten)."""

_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.OWNER: 2}


def _allows(role: Role, needed: Role) -> bool:
    return _RANK[role] >= _RANK[needed]


class TodoApplication(Application[UUID]):
    name = "todos"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        conflict_retries: int = 8,
        command_cache_size: int = 10_000,
    ) -> None:
        super().__init__(env)
        self.conflict_retries = conflict_retries
        self.recent: CommandCache[Todo] = CommandCache(command_cache_size)
        """Todos this process just stored: a command on one reads only newer events."""
        self.order_index: OrderIndex | None = None
        """Set by the composition root: where a move finds a missing neighbour's key."""
        self._known_inboxes: OrderedDict[str, None] = OrderedDict()
        self._inbox_lock = threading.Lock()

    # ---- todo commands --------------------------------------------------------------

    def create_todo(
        self,
        actor: str,
        *,
        title: str,
        list_id: UUID | None = None,
        description: str = "",
        due: datetime | None = None,
        priority: str = "normal",
        tags: list[str] | None = None,
        assignee: str | None = None,
        recurrence: str | None = None,
        remind_at: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> CommandResult:
        """A todo in ``list_id`` (the actor's Inbox by default; made on first use, in the
        same append). An editor of the list may create; ``assignee`` must be a member.
        A reminder is a second event of the same append."""
        fields = NewTodo(
            title=title,
            description=description,
            due=due,
            priority=priority,
            tags=tags,
            assignee=assignee,
            recurrence=recurrence,
            remind_at=remind_at,
        )
        own_inbox = inbox_id(actor)
        target = list_id or own_inbox
        self._check_create(actor, target, assignee)
        todo_id = Todo.idempotent_id(actor, idempotency_key) if idempotency_key else None
        while True:
            inbox = self._missing_inbox(actor) if target == own_inbox else None
            todo = _new_todo(actor, target, todo_id, fields)
            try:
                if inbox is None:
                    return self._save(todo)
                result = self._save(inbox, todo)
                self._remember_inbox(actor)
                return result
            except RecordConflictError:
                if inbox is not None and self._exists(inbox.id):
                    # Another request made the Inbox first: append the todo alone.
                    self._remember_inbox(actor)
                    continue
                if todo_id is None:
                    raise
                return self._replay_idempotent_create(actor, todo)

    async def create_todo_async(
        self, actor: str, *, offload: Offload, **fields: Unpack[NewTodo]
    ) -> CommandResult:
        """``create_todo`` without a thread held while its append waits for its batch,
        when the command needs no read: a todo for the actor's own Inbox, which this
        process knows exists (the common case: a user's second todo onwards). Decided on
        the event loop, appended with ``append_async``. Anything else, and what a
        conflict needs (an Idempotency-Key used before), is ``create_todo`` and its
        reads on a worker thread (``offload``), as the synchronous path does them."""
        own_inbox = inbox_id(actor)
        if fields.get("list_id") not in (None, own_inbox) or not (
            self._creates_without_reads(actor)
        ):
            return await offload(partial(self.create_todo, actor, **fields))
        self._check_create(actor, own_inbox, fields.get("assignee"))  # no read: own Inbox
        key = fields.get("idempotency_key")
        todo_id = Todo.idempotent_id(actor, key) if key else None
        todo = _new_todo(actor, own_inbox, todo_id, fields)
        events = list(todo.pending_events)
        try:
            position = _last_position(await self._save_async(todo))
        except RecordConflictError as conflict:
            try:
                position = await offload(
                    partial(self._position_if_own, [events], todo.id, conflict)
                )
            except RecordConflictError:
                if todo_id is None:
                    raise
                return await offload(partial(self._replay_idempotent_create, actor, todo))
        self.recent.put(todo)
        return CommandResult(todo, position, recorded=True)

    def _check_create(self, actor: str, list_id: UUID, assignee: str | None) -> None:
        """That ``actor`` may create in ``list_id`` (an editor; a non-member is told the
        list is not found) and ``assignee`` is a member. No read for the actor's Inbox."""
        access = self._access(actor, list_id, missing=ListNotFound)
        _require(access, Role.EDITOR)
        if assignee is not None and not access.is_member(assignee):
            raise InvariantViolation("assignee", "must be a member of the todo's list")

    def _creates_without_reads(self, actor: str) -> bool:
        """Whether a create in ``actor``'s Inbox needs no read here: the Inbox is known to
        exist, and the store appends on the event loop (``_appender``)."""
        return self._appender() is not None and self._knows_inbox(actor)

    def _appender(self) -> AsyncAppender | None:
        """The recorder, if it appends on the event loop (looked up by attribute: a
        check against a runtime protocol costs ~20 µs)."""
        if getattr(self.recorder, "groups_commits", False):
            return cast(AsyncAppender, self.recorder)
        return None

    def update_todo(
        self,
        actor: str,
        todo_id: UUID,
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Apply a partial update; ``None`` clears ``due``, ``assignee`` or ``recurrence``."""
        unknown = set(changes) - set(PATCH_FIELDS)
        if unknown:
            raise ValueError(f"unknown fields: {sorted(unknown)}")

        def apply(todo: Todo, access: Access) -> None:
            if "title" in changes:
                todo.change_title(changes["title"], actor=actor)
            if "description" in changes:
                todo.change_description(changes["description"], actor=actor)
            # A rule needs a due date: it is cleared before the date, and set after it.
            if "recurrence" in changes and changes["recurrence"] is None:
                todo.set_recurrence(None, actor=actor)
            if "due" in changes:
                todo.set_due(changes["due"], actor=actor)
            if "recurrence" in changes and changes["recurrence"] is not None:
                todo.set_recurrence(changes["recurrence"], actor=actor)
            if "priority" in changes:
                todo.change_priority(changes["priority"], actor=actor)
            if "tags" in changes:
                todo.change_tags(changes["tags"], actor=actor)
            if "remind_at" in changes:
                todo.set_reminder(changes["remind_at"], actor=actor)
            if "assignee" in changes:
                assignee = changes["assignee"]
                if assignee is not None and not access.is_member(assignee):
                    raise InvariantViolation("assignee", "must be a member of the todo's list")
                todo.assign(assignee, actor=actor)

        return self._execute(actor, todo_id, apply, expected_version)

    def complete_todo(
        self, actor: str, todo_id: UUID, *, expected_version: int | None = None
    ) -> CommandResult:
        """A recurring todo records the completion and rolls its due date on."""
        return self._execute(
            actor, todo_id, lambda todo, _: todo.complete(actor=actor), expected_version
        )

    def reopen_todo(
        self, actor: str, todo_id: UUID, *, expected_version: int | None = None
    ) -> CommandResult:
        return self._execute(
            actor, todo_id, lambda todo, _: todo.reopen(actor=actor), expected_version
        )

    def delete_todo(
        self, actor: str, todo_id: UUID, *, expected_version: int | None = None
    ) -> CommandResult:
        return self._execute(
            actor,
            todo_id,
            lambda todo, _: todo.delete(actor=actor),
            expected_version,
            allow_deleted=True,
        )

    def move_todo(
        self,
        actor: str,
        todo_id: UUID,
        *,
        list_id: UUID | None = None,
        after: UUID | None = None,
        before: UUID | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """To ``list_id`` (default: its own list), right after ``after`` and/or right
        before ``before`` (todo ids of that list); neither: to the end of the list. One
        ``Moved`` event on this todo: its neighbours are never rewritten."""
        if todo_id in (after, before):
            raise InvariantViolation("after", "a todo cannot be placed next to itself")

        def apply(todo: Todo, access: Access) -> None:
            target = list_id or todo.list_id
            if target != todo.list_id:
                _require(self._access(actor, target, missing=ListNotFound), Role.EDITOR)
            lower = None if after is None else self._neighbour_key(actor, after, target, "after")
            upper = None if before is None else self._neighbour_key(actor, before, target, "before")
            if lower is not None and upper is not None and lower >= upper:
                raise InvariantViolation("before", "must come after `after` in the list")
            key = self._key_for(todo, target, lower, upper, after is None and before is None)
            if key is not None:
                todo.move(target, key, actor=actor)

        return self._execute(actor, todo_id, apply, expected_version)

    # ---- steps ----------------------------------------------------------------------

    def add_step(
        self, actor: str, todo_id: UUID, text: str, *, expected_version: int | None = None
    ) -> tuple[CommandResult, UUID]:
        """A step at the end of the checklist; its id."""
        step_id = uuid4()  # chosen once: a retried attempt adds the same step

        def apply(todo: Todo, _: Access) -> None:
            todo.add_step(text, step_id=step_id, actor=actor)

        result = self._execute(actor, todo_id, apply, expected_version)
        return result, step_id

    def update_step(
        self,
        actor: str,
        todo_id: UUID,
        step_id: UUID,
        *,
        text: str | None = None,
        done: bool | None = None,
        index: int | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Rename, check or uncheck, and move a step, in one command."""

        def apply(todo: Todo, _: Access) -> None:
            if text is not None:
                todo.rename_step(step_id, text, actor=actor)
            if done is not None:
                todo.check_step(step_id, done, actor=actor)
            if index is not None:
                todo.move_step(step_id, index, actor=actor)
            if text is None and done is None and index is None:
                todo.rename_step(step_id, _step_text(todo, step_id), actor=actor)  # 404 check

        return self._execute(actor, todo_id, apply, expected_version)

    def remove_step(
        self, actor: str, todo_id: UUID, step_id: UUID, *, expected_version: int | None = None
    ) -> CommandResult:
        return self._execute(
            actor, todo_id, lambda todo, _: todo.remove_step(step_id, actor=actor), expected_version
        )

    # ---- list commands --------------------------------------------------------------

    def ensure_inbox(self, user: str) -> None:
        """Make ``user``'s Inbox if it is not there yet (once per process, then no read)."""
        inbox = self._missing_inbox(user)
        if inbox is None:
            return
        with suppress(RecordConflictError):  # made meanwhile, by another request
            self.save(inbox)
        self._remember_inbox(user)

    def create_list(self, actor: str, name: str) -> ListResult:
        """A list with the actor as its owner (and the actor's Inbox, on first use)."""
        todo_list = TodoList.create(owner=actor, name=name)
        inbox = self._missing_inbox(actor)
        aggregates: list[Aggregate] = [todo_list] if inbox is None else [inbox, todo_list]
        try:
            position = self._save_all(aggregates)
        except RecordConflictError:
            if inbox is None or not self._exists(inbox.id):
                raise
            self._remember_inbox(actor)
            todo_list = TodoList.create(owner=actor, name=name, id=todo_list.id)
            position = self._save_all([todo_list])
        self._remember_inbox(actor)
        return ListResult(todo_list, position, recorded=True)

    def rename_list(
        self, actor: str, list_id: UUID, name: str, *, expected_version: int | None = None
    ) -> ListResult:
        return self._execute_list(
            actor,
            list_id,
            lambda todo_list: todo_list.rename(name, actor=actor),
            Role.OWNER,
            expected_version,
        )

    def set_member(
        self,
        actor: str,
        list_id: UUID,
        user: str,
        role: str,
        *,
        expected_version: int | None = None,
    ) -> ListResult:
        """Add ``user`` with ``role``, or change their role (owners only)."""
        return self._execute_list(
            actor,
            list_id,
            lambda todo_list: todo_list.set_member(user, role, actor=actor),
            Role.OWNER,
            expected_version,
        )

    def remove_member(
        self, actor: str, list_id: UUID, user: str, *, expected_version: int | None = None
    ) -> ListResult:
        """An owner removes a member; any member may remove themself (leave)."""
        user = clean_user_id(user)
        return self._execute_list(
            actor,
            list_id,
            lambda todo_list: todo_list.remove_member(user, actor=actor),
            Role.VIEWER if user == actor else Role.OWNER,
            expected_version,
        )

    def delete_list(
        self,
        actor: str,
        list_id: UUID,
        todo_ids: Iterable[UUID],
        *,
        expected_version: int | None = None,
    ) -> ListResult:
        """Delete the list and, in the same append, those of ``todo_ids`` still in it
        (each records ``Deleted`` with reason ``list_deleted``). Owners only."""
        ids = list(dict.fromkeys(todo_ids))
        for attempt in range(self.conflict_retries + 1):
            if attempt:
                time.sleep(CONFLICT_BACKOFF.delay(attempt))
            todo_list = self._get_list_for(actor, list_id, Role.OWNER)
            if expected_version is not None and todo_list.version != expected_version:
                raise PreconditionFailed(todo_list.version)
            todo_list.delete(actor=actor)
            todos = [t for t in self._get_todos(ids) if t.list_id == list_id and not t.deleted]
            for todo in todos:
                todo.delete(actor=actor, reason=DeleteReason.LIST_DELETED)
            try:
                position = self._save_all([todo_list, *todos])
            except RecordConflictError:
                if expected_version is not None:
                    raise PreconditionFailed(self._get_list(list_id).version) from None
                continue
            return ListResult(todo_list, position, recorded=True)
        raise ConcurrencyConflict(f"list {list_id}: gave up after {self.conflict_retries} retries")

    def authorize_list(self, actor: str, list_id: UUID, needed: Role) -> TodoList:
        """The list if the actor's role allows ``needed``: ``ListNotFound`` for
        non-members, ``Forbidden`` for too small a role (a cheap check before work)."""
        return self._get_list_for(actor, list_id, needed)

    # ---- queries on the event store -------------------------------------------------

    def get_list(self, actor: str, list_id: UUID) -> TodoList:
        """The list, for any of its members."""
        if list_id == inbox_id(actor):
            self.ensure_inbox(actor)
        return self._get_list_for(actor, list_id, Role.VIEWER)

    def get_todo(self, actor: str, todo_id: UUID, *, version: int | None = None) -> Todo:
        """Current state, or the state as of ``version`` (time travel, also after deletion).

        Access is decided by the todo's current list, whatever list it was in then."""
        todo = self._get_visible(actor, todo_id)
        if version is None:
            if todo.deleted:
                raise TodoGone(str(todo_id))
            return todo
        if version > todo.version:
            raise VersionNotFound(f"todo {todo_id} has no version {version}")
        past: object = self._get(todo_id, version=version)
        assert isinstance(past, Todo)
        return past

    def list_events(self, actor: str, todo_id: UUID) -> list[StoredTodoEvent]:
        """The todo's events in order; its list's members may read them after deletion too."""
        events = list(self.events.get(todo_id))
        if not events or not isinstance(events[0], Todo.Created):
            raise TodoNotFound(str(todo_id))
        todo: Any = None
        for e in events:
            todo = e.mutate(todo)  # type: ignore[attr-defined]
        assert isinstance(todo, Todo)
        self._check_visible(actor, todo)
        owner = todo.owner
        positions = self._recorder_positions(todo_id)
        return [
            StoredTodoEvent(
                id=event_id(todo_id, e.originator_version),
                type=public_type(e),
                version=e.originator_version,
                position=positions.get(e.originator_version),
                occurred_at=e.timestamp,  # type: ignore[attr-defined]
                actor=getattr(e, "actor", None) or owner,
                data=event_payload(e),
                metadata=_metadata(e),
            )
            for e in events
        ]

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """The library's save, in a span, each new event stamped with the command's
        context (``tododb.infra.tracing``): stored with it, never rewritten."""
        if not exporting():
            stamp(_pending(objs))
            return self._save_collected(objs, kwargs)
        with append_span() as span:
            stamp(_pending(objs), span)
            return self._save_collected(objs, kwargs)

    def _save_collected(self, objs: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """The library's ``save``, step for step, but collecting with ``Collected``: its
        runtime-protocol checks cost ~20 µs an aggregate, a tenth of a command's CPU."""
        processing_event = Collected()
        processing_event.collect_events(*objs, **kwargs)
        recordings = self._record(processing_event)
        self._recorded(processing_event, recordings)
        return recordings

    def _recorded(
        self, processing_event: ProcessingEvent[UUID], recordings: list[Recording[UUID]]
    ) -> None:
        """What the library's ``save`` does once the events are stored."""
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # the library's deprecated hook, kept

    async def _save_async(self, *objs: Aggregate) -> list[Recording[UUID]]:
        """``save``, awaiting the append on the event loop instead of on a thread."""
        if not exporting():
            stamp(_pending(objs))
            return await self._record_async(objs)
        with append_span() as span:
            stamp(_pending(objs), span)
            return await self._record_async(objs)

    async def _record_async(self, objs: Sequence[Aggregate]) -> list[Recording[UUID]]:
        """``_save_collected`` with the library's ``_record`` and ``EventStore.put``, step
        for step, around an awaited append."""
        processing_event = Collected()
        processing_event.collect_events(*objs)
        domain_events = processing_event.events
        stored = [self.mapper.to_stored_event(e) for e in domain_events]
        appender = self._appender()
        assert appender is not None, "only called where _creates_without_reads"
        ids = await appender.append_async(stored)
        recordings = [
            Recording(
                d,
                Notification(
                    originator_id=s.originator_id,
                    originator_version=s.originator_version,
                    topic=s.topic,
                    state=s.state,
                    id=n,
                ),
            )
            for d, s, n in zip(domain_events, stored, ids, strict=True)
        ]
        if self.repository.cache and not self.repository.fastforward:  # as ``_record``
            for aggregate_id, aggregate in processing_event.aggregates.items():
                self.repository.cache.put(aggregate_id, aggregate)
        self._recorded(processing_event, recordings)
        return recordings

    def close(self) -> None:
        """Stop the event store's committer thread, then close as the library does."""
        close_recorder = getattr(self.recorder, "close", None)
        if close_recorder is not None:
            close_recorder()
        super().close()

    def head_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    def write_figures(self) -> Mapping[str, float] | None:
        """The event store's group-commit figures (batches, commands, seconds, queued),
        if its appends go through group commit; read by the API's metrics."""
        figures: Callable[[], Mapping[str, float]] | None = getattr(
            self.recorder, "write_figures", None
        )
        return None if figures is None else figures()

    # ---- access ---------------------------------------------------------------------

    def _access(
        self,
        actor: str,
        list_id: UUID,
        *,
        missing: type[Exception],
        missing_id: UUID | None = None,
        deleted_lists: bool = False,
    ) -> Access:
        """The actor's role on ``list_id``; ``missing`` (404) for non-members. The actor's
        own Inbox needs no read. ``deleted_lists``: a deleted list's members as they were
        (for reading the history of its todos)."""
        if list_id == inbox_id(actor):
            return Access(Role.OWNER, list_id, None, actor)
        todo_list = self._load_list(list_id)
        role = None
        if todo_list is not None:
            role = todo_list.members.get(actor) if deleted_lists else todo_list.role_of(actor)
        if todo_list is None or role is None:
            raise missing(str(missing_id or list_id))
        return Access(role, list_id, todo_list, actor)

    def _todo_access(self, actor: str, todo: Todo, *, deleted_lists: bool = False) -> Access:
        if todo.list_id != inbox_id(actor) and todo.list_id == inbox_id(todo.owner):
            raise TodoNotFound(str(todo.id))  # someone else's Inbox: theirs alone, no read
        return self._access(
            actor,
            todo.list_id,
            missing=TodoNotFound,
            missing_id=todo.id,
            deleted_lists=deleted_lists,
        )

    def _check_visible(self, actor: str, todo: Todo) -> None:
        self._todo_access(actor, todo, deleted_lists=todo.deleted)

    def _get_visible(self, actor: str, todo_id: UUID) -> Todo:
        todo = self._load_todo(todo_id)
        self._check_visible(actor, todo)
        return todo

    def _get_list_for(self, actor: str, list_id: UUID, needed: Role) -> TodoList:
        todo_list = self._load_list(list_id)
        role = None if todo_list is None else todo_list.role_of(actor)
        if todo_list is None or role is None:
            raise ListNotFound(str(list_id))
        if not _allows(role, needed):
            raise Forbidden(f"a {role.value} of the list may not do this")
        return todo_list

    # ---- internals ------------------------------------------------------------------

    def _get(self, aggregate_id: UUID, *, version: int | None = None) -> object:
        """An aggregate from its events, replayed by ``mutate_all``."""
        return self.repository.get(aggregate_id, version=version, projector_func=mutate_all)

    def _load_todo(self, todo_id: UUID) -> Todo:
        try:
            todo: object = self._get(todo_id)
        except AggregateNotFoundError:
            raise TodoNotFound(str(todo_id)) from None
        if not isinstance(todo, Todo):
            raise TodoNotFound(str(todo_id))
        return todo

    def _load_list(self, list_id: UUID) -> TodoList | None:
        try:
            todo_list: object = self._get(list_id)
        except AggregateNotFoundError:
            return None
        return todo_list if isinstance(todo_list, TodoList) else None

    def _get_list(self, list_id: UUID) -> TodoList:
        todo_list = self._load_list(list_id)
        if todo_list is None:
            raise ListNotFound(str(list_id))
        return todo_list

    def _get_todos(self, ids: Sequence[UUID]) -> list[Todo]:
        todos = []
        for todo_id in ids:
            try:
                todo: object = self._get(todo_id)
            except AggregateNotFoundError:
                continue
            if isinstance(todo, Todo):
                todos.append(todo)
        return todos

    def _exists(self, aggregate_id: UUID) -> bool:
        return bool(self.recorder.select_events(aggregate_id, limit=1))

    def _missing_inbox(self, user: str) -> TodoList | None:
        """A new Inbox for ``user`` if the store has none; None if it has (cached)."""
        if self._knows_inbox(user):
            return None
        if self._exists(inbox_id(user)):
            self._remember_inbox(user)
            return None
        return TodoList.create_inbox(user)

    def _knows_inbox(self, user: str) -> bool:
        """Whether this process knows ``user``'s Inbox exists (kept as recently used)."""
        with self._inbox_lock:
            if user not in self._known_inboxes:
                return False
            self._known_inboxes.move_to_end(user)
            return True

    def _remember_inbox(self, user: str) -> None:
        with self._inbox_lock:
            self._known_inboxes[user] = None
            self._known_inboxes.move_to_end(user)
            while len(self._known_inboxes) > KNOWN_INBOXES_MAX:
                self._known_inboxes.popitem(last=False)

    def _neighbour_key(self, actor: str, neighbour_id: UUID, list_id: UUID, field: str) -> str:
        """The order key of a live todo of ``list_id`` (else a 422 on ``field``)."""
        try:
            neighbour: object = self._get(neighbour_id)
        except AggregateNotFoundError:
            neighbour = None
        if not isinstance(neighbour, Todo) or neighbour.deleted or neighbour.list_id != list_id:
            raise InvariantViolation(field, "must be a todo of the list the todo moves to")
        return neighbour.order_key

    def _key_for(
        self, todo: Todo, list_id: UUID, lower: str | None, upper: str | None, to_end: bool
    ) -> str | None:
        """The todo's new key between ``lower`` and ``upper``, looking up the side not
        given in the order index (stale is fine: a looked-up key out of order is ignored).
        None when the todo is already there."""
        index = self.order_index
        if to_end:
            if (
                list_id == todo.list_id
                and index is not None
                and index.next_key(list_id, todo.order_key) is None
            ):
                return None  # already last
            return creation_key(Todo.Event.create_timestamp(), todo.id)
        same_list = list_id == todo.list_id
        if upper is None and lower is not None and index is not None:
            found = index.next_key(list_id, lower)
            if same_list and found == todo.order_key:
                return None  # already right after `after`
            upper = found if found is not None and found > lower else None
        elif lower is None and upper is not None and index is not None:
            found = index.previous_key(list_id, upper)
            if same_list and found == todo.order_key:
                return None  # already right before `before`
            lower = found if found is not None and found < upper else None
        if same_list and lower is not None and upper is not None and lower < todo.order_key < upper:
            return None  # already between them
        return key_between(lower, upper, todo.id)

    def _execute(
        self,
        actor: str,
        todo_id: UUID,
        command: Callable[[Todo, Access], None],
        expected_version: int | None,
        *,
        allow_deleted: bool = False,
    ) -> CommandResult:
        """Load, check access, decide, append; on a lost race catch up and decide again.

        With ``expected_version`` the caller has pinned the state it decided on, so a
        lost race is the caller's conflict (412), never retried here. Commands need an
        editor of the todo's list; a todo in the actor's own Inbox needs no other read.
        A todo this process just stored is decided on as it stored it, unread, and
        checked by its own append (``_decide_and_append``); others are replayed. Each
        attempt decides on a copy, so that a lost one costs only a read of the events
        stored since (a hot todo's whole history is never replayed again); a copy that
        was merely behind is retried at once, a race lost on a current one after a
        jittered backoff.
        """
        base, unread = self._starting_copy(todo_id, expected_version)
        races = 0
        while True:
            try:
                return self._decide_and_append(
                    actor,
                    base.detached_copy(),
                    command,
                    expected_version,
                    allow_deleted=allow_deleted,
                    unread=unread,
                )
            except (_StaleCopy, RecordConflictError):
                if not unread and expected_version is None:
                    races += 1
                    if races > self.conflict_retries:
                        raise ConcurrencyConflict(
                            f"todo {todo_id}: gave up after {self.conflict_retries} retries"
                        ) from None
                    # Jittered backoff: racing writers spread out instead of colliding again.
                    time.sleep(CONFLICT_BACKOFF.delay(races))
                base = self._caught_up(base)
                if not unread and expected_version is not None:
                    raise PreconditionFailed(base.version) from None
                unread = False  # behind (nobody raced it) or raced: up to date now

    def _starting_copy(self, todo_id: UUID, expected_version: int | None) -> tuple[Todo, bool]:
        """The todo to decide on first, and whether it is this process's copy, unread:
        with ``If-Match``, only a copy at that very version is; another is caught up."""
        cached = self.recent.take(todo_id)
        if cached is None:
            return self._load_todo(todo_id), False
        if expected_version in (None, cached.version):
            return cached, True
        return self._caught_up(cached), False

    def _caught_up(self, todo: Todo) -> Todo:
        """``todo`` (this process's own) with the events stored after it applied."""
        caught_up: Todo = mutate_all(todo, self.events.get(todo.id, gt=todo.version))
        return caught_up

    def _stored_after(self, todo_id: UUID, version: int) -> bool:
        return bool(self.recorder.select_events(todo_id, gt=version, limit=1))

    def _decide_and_append(
        self,
        actor: str,
        todo: Todo,
        command: Callable[[Todo, Access], None],
        expected_version: int | None,
        *,
        allow_deleted: bool,
        unread: bool = False,
    ) -> CommandResult:
        """One attempt of ``command`` on ``todo``; ``RecordConflictError`` if another
        writer stored the todo's next version first.

        ``unread``: ``todo`` is this process's copy as it last stored it, not read from
        the store. A decision that makes events needs no read: its append proves the
        copy current, as the store refuses a version already taken. A decision that
        stores nothing (a refusal, or no change) proves nothing, so it stands only if no
        newer event exists (``_StaleCopy`` otherwise). Either way the caller brings its
        copy up to date and decides again, without backing off: nobody raced it.
        """
        version = todo.version
        try:
            made = self._decide(actor, todo, command, expected_version, allow_deleted=allow_deleted)
        except Exception:
            if unread and self._stored_after(todo.id, version):
                raise _StaleCopy from None
            raise
        if made:
            return self._save(todo)
        if unread:
            if self._stored_after(todo.id, version):
                raise _StaleCopy
            self.recent.put(todo)
        return CommandResult(todo, self._last_position(todo.id), recorded=False)

    def _decide(
        self,
        actor: str,
        todo: Todo,
        command: Callable[[Todo, Access], None],
        expected_version: int | None,
        *,
        allow_deleted: bool,
    ) -> bool:
        """Check access and the precondition, run ``command``; whether it made events."""
        access = self._todo_access(actor, todo)
        _require(access, Role.EDITOR)
        if expected_version is not None and todo.version != expected_version:
            raise PreconditionFailed(todo.version)
        if todo.deleted and not allow_deleted:
            raise TodoGone(str(todo.id))
        try:
            command(todo, access)
        except TodoDeletedError:
            raise TodoGone(str(todo.id)) from None
        except ListDeletedError:
            raise ListNotFound(str(todo.list_id)) from None
        return bool(todo.pending_events)

    def _execute_list(
        self,
        actor: str,
        list_id: UUID,
        command: Callable[[TodoList], None],
        needed: Role,
        expected_version: int | None,
    ) -> ListResult:
        for attempt in range(self.conflict_retries + 1):
            if attempt:
                time.sleep(CONFLICT_BACKOFF.delay(attempt))
            todo_list = self._get_list_for(actor, list_id, needed)
            if expected_version is not None and todo_list.version != expected_version:
                raise PreconditionFailed(todo_list.version)
            try:
                command(todo_list)
            except ListDeletedError:
                raise ListNotFound(str(list_id)) from None
            if not todo_list.pending_events:
                return ListResult(todo_list, self._last_position(list_id), recorded=False)
            try:
                position = self._save_all([todo_list])
            except RecordConflictError:
                if expected_version is not None:
                    raise PreconditionFailed(self._get_list(list_id).version) from None
                continue
            return ListResult(todo_list, position, recorded=True)
        raise ConcurrencyConflict(f"list {list_id}: gave up after {self.conflict_retries} retries")

    def _save(self, *aggregates: Aggregate) -> CommandResult:
        """Append the aggregates' new events in one go; the last one is the todo."""
        todo = aggregates[-1]
        assert isinstance(todo, Todo)
        position = self._save_all(list(aggregates))
        self.recent.put(todo)
        return CommandResult(todo, position, recorded=True)

    def _save_all(self, aggregates: list[Aggregate]) -> int | None:
        """Append the aggregates' new events (all or none); ``RecordConflictError`` if
        another writer won. The position of the last aggregate's last event.

        When the connection drops around COMMIT the library retries the insert and meets
        the rows it had just committed. So a conflict is decided from what is stored: if
        the stored events are this command's own, byte for byte, the command succeeded.
        """
        events = [list(a.pending_events) for a in aggregates]
        try:
            recordings = self.save(*aggregates)
        except RecordConflictError as conflict:
            return self._position_if_own(events, aggregates[-1].id, conflict)
        return _last_position(recordings)

    def _position_if_own(
        self, events: list[list[Any]], aggregate_id: UUID, conflict: RecordConflictError
    ) -> int | None:
        """After ``conflict``: if the store holds exactly ``events``, a retried append met
        its own committed rows and the command succeeded: ``aggregate_id``'s position.
        Otherwise another writer won: ``conflict`` again."""
        if not all(self._stored_are(e) for e in events if e):
            raise conflict
        return self._last_position(aggregate_id)

    def _stored_are(self, events: list[Any]) -> bool:
        """Whether the store holds exactly ``events`` at their versions (same topic, state
        and timestamp: a competing writer's event differs at least in its timestamp)."""
        first, last = events[0].originator_version, events[-1].originator_version
        stored = self.recorder.select_events(events[0].originator_id, gt=first - 1, lte=last)
        mine = [self.mapper.to_stored_event(e) for e in events]
        return [(s.originator_version, s.topic, s.state) for s in stored] == [
            (m.originator_version, m.topic, m.state) for m in mine
        ]

    def _replay_idempotent_create(self, actor: str, attempted: Todo) -> CommandResult:
        """A create with a used key returns the todo it made, if the request matches."""
        first = next(iter(self.events.get(attempted.id, lte=1)), None)
        if first is None or getattr(first, "owner", None) != actor:
            raise IdempotencyKeyReused("the Idempotency-Key belongs to another request")
        original = {f: getattr(first, f) for f in REPLAYED_FIELDS}
        requested = {f: getattr(attempted, f) for f in REPLAYED_FIELDS}
        if original != requested:
            raise IdempotencyKeyReused("the Idempotency-Key was used with a different request")
        current = self._get_visible(actor, attempted.id)
        return CommandResult(current, self._last_position(current.id), recorded=False)

    def _last_position(self, aggregate_id: UUID) -> int | None:
        last_position = getattr(self.recorder, "last_position", None)
        return None if last_position is None else last_position(aggregate_id)

    def _recorder_positions(self, todo_id: UUID) -> dict[int, int]:
        positions = getattr(self.recorder, "positions", None)
        return {} if positions is None else positions(todo_id)


class Collected(ProcessingEvent[UUID]):
    """The library's ``ProcessingEvent``, telling aggregates from events by class rather
    than by runtime protocol (every aggregate here is an ``Aggregate``)."""

    def collect_events(self, *objs: Any, **kwargs: Any) -> None:
        for obj in objs:
            if obj is None:
                continue
            if not isinstance(obj, Aggregate):
                super().collect_events(obj)
                continue
            self.events.extend(obj.collect_events())
            self.aggregates[obj.id] = obj
        self.saved_kwargs.update(kwargs)


def _new_todo(actor: str, list_id: UUID, todo_id: UUID | None, fields: NewTodo) -> Todo:
    """A new todo of ``actor``'s in ``list_id`` (with its reminder, if any): its events
    pending, nothing checked but what the aggregate checks itself."""
    todo = Todo.create(
        owner=actor,
        title=fields["title"],
        description=fields.get("description", ""),
        due=fields.get("due"),
        priority=fields.get("priority", "normal"),
        tags=fields.get("tags") or [],
        list_id=list_id,
        assignee=fields.get("assignee"),
        recurrence=fields.get("recurrence"),
        actor=actor,
        id=todo_id,
    )
    remind_at = fields.get("remind_at")
    if remind_at is not None:
        todo.set_reminder(remind_at, actor=actor)
    return todo


def mutate_all(aggregate: Any, domain_events: Iterable[Any]) -> Any:
    """The library's ``project_aggregate`` without its per-event ``assert isinstance(event,
    CanMutateProtocol)``: a check against a runtime protocol costs about 25 µs an event,
    most of a command's CPU once a todo has a few dozen events. Our events all mutate."""
    for domain_event in domain_events:
        aggregate = domain_event.mutate(aggregate)
    return aggregate


def _require(access: Access, needed: Role) -> None:
    if not _allows(access.role, needed):
        raise Forbidden(f"a {access.role.value} of the list may not do this")


def _step_text(todo: Todo, step_id: UUID) -> str:
    for step in todo.steps:
        if step["id"] == str(step_id):
            text: str = step["text"]
            return text
    raise StepNotFound(f"todo {todo.id} has no step {step_id}")


def _pending(objs: Sequence[Any]) -> list[Any]:
    return [e for obj in objs for e in getattr(obj, "pending_events", ())]


def _metadata(domain_event: Any) -> dict[str, str] | None:
    context = event_context(domain_event)
    return None if context is None else context.as_meta()


def _last_position(recordings: list[Any]) -> int | None:
    ids = [r.notification.id for r in recordings if r.notification.id is not None]
    return max(ids) if ids else None
