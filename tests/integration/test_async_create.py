"""``create_todo_async``, the API's create path, on the real event store: decided and
appended on the event loop when it needs no read, on a thread (``offload``) otherwise,
with the same outcomes as ``create_todo``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import uuid4

import pytest

from tododb.application import IdempotencyKeyReused, TodoApplication
from tododb.domain import InvariantViolation, inbox_id
from tododb.infra.tracing import command_context

T = TypeVar("T")


class Offload:
    """Runs blocking calls on a thread, as the API's thread pool does, and counts them."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, func: Callable[[], T]) -> T:
        self.calls += 1
        return await asyncio.to_thread(func)


def new_user(todo_app: TodoApplication) -> str:
    """A user whose Inbox exists and is known to this process (one create done)."""
    user = f"async-{uuid4().hex[:8]}"
    todo_app.create_todo(user, title="first")
    return user


async def test_a_create_in_a_known_inbox_is_decided_and_appended_on_the_event_loop(
    todo_app: TodoApplication,
) -> None:
    user, offload = new_user(todo_app), Offload()
    result = await todo_app.create_todo_async(
        user, offload=offload, title="on the loop", tags=["a"], priority="high"
    )
    assert offload.calls == 0
    assert result.recorded
    assert result.position is not None
    stored = todo_app.get_todo(user, result.todo.id)
    assert (stored.title, stored.tags, stored.priority, stored.list_id) == (
        "on the loop",
        ["a"],
        "high",
        inbox_id(user),
    )
    assert todo_app._last_position(result.todo.id) == result.position


async def test_a_first_create_and_a_create_in_a_shared_list_run_on_a_thread(
    todo_app: TodoApplication,
) -> None:
    user, offload = f"async-{uuid4().hex[:8]}", Offload()
    first = await todo_app.create_todo_async(user, offload=offload, title="makes the Inbox")
    assert offload.calls == 1  # the Inbox had to be looked for
    assert first.recorded
    shared = todo_app.create_list(user, "shared").todo_list
    in_list = await todo_app.create_todo_async(
        user, offload=offload, title="in a list", list_id=shared.id
    )
    assert offload.calls == 2  # the list's members had to be read
    assert todo_app.get_todo(user, in_list.todo.id).list_id == shared.id
    await todo_app.create_todo_async(user, offload=offload, title="now on the loop")
    assert offload.calls == 2


async def test_an_idempotent_retry_returns_the_first_todo_and_a_reused_key_is_refused(
    todo_app: TodoApplication,
) -> None:
    user, offload = new_user(todo_app), Offload()
    body: dict[str, Any] = {"title": "once", "idempotency_key": "key-1"}
    first = await todo_app.create_todo_async(user, offload=offload, **body)
    again = await todo_app.create_todo_async(user, offload=offload, **body)
    assert first.recorded
    assert not again.recorded
    assert (again.todo.id, again.position) == (first.todo.id, first.position)
    with pytest.raises(IdempotencyKeyReused):
        await todo_app.create_todo_async(
            user, offload=offload, title="another", idempotency_key="key-1"
        )
    assert [e.type for e in todo_app.list_events(user, first.todo.id)] == ["todos.task.created"]


async def test_an_assignee_who_is_not_the_inbox_owner_is_refused_before_any_append(
    todo_app: TodoApplication,
) -> None:
    user = new_user(todo_app)
    head = todo_app.head_position()
    with pytest.raises(InvariantViolation, match="member"):
        await todo_app.create_todo_async(
            user, offload=Offload(), title="for someone", assignee="someone-else"
        )
    assert todo_app.head_position() == head


async def test_concurrent_creates_on_the_loop_each_get_their_own_position(
    todo_app: TodoApplication,
) -> None:
    user, offload = new_user(todo_app), Offload()
    results = await asyncio.gather(
        *(todo_app.create_todo_async(user, offload=offload, title=f"t{i}") for i in range(64))
    )
    assert offload.calls == 0
    positions = [r.position for r in results]
    assert None not in positions
    assert len(set(positions)) == 64
    for result in results:
        assert todo_app._last_position(result.todo.id) == result.position


async def test_the_events_carry_the_command_context(todo_app: TodoApplication) -> None:
    user = new_user(todo_app)
    with command_context("corr-async-1", "request:async-1"):
        result = await todo_app.create_todo_async(user, offload=Offload(), title="traced")
    [created] = todo_app.list_events(user, result.todo.id)
    assert created.metadata is not None
    assert created.metadata["correlation_id"] == "corr-async-1"
    assert created.metadata["causation_id"] == "request:async-1"
