"""The cache of todos a process has just stored: bounded, exclusive, never shared."""

from __future__ import annotations

from uuid import UUID

from tododb.domain import Todo
from tododb.infra.command_cache import CommandCache


def stored_todo(title: str = "t") -> Todo:
    todo = Todo.create(owner="ann", title=title)
    todo.collect_events()  # as after a successful append
    return todo


def test_a_taken_todo_is_gone_until_put_back() -> None:
    cache = CommandCache(10)
    todo = stored_todo()
    cache.put(todo)
    taken = cache.take(todo.id)
    assert taken is not None
    assert (taken.id, taken.version, taken.title) == (todo.id, 1, "t")
    assert cache.take(todo.id) is None


def test_what_is_cached_shares_nothing_with_the_callers_todo() -> None:
    cache = CommandCache(10)
    todo = stored_todo()
    todo.add_step("a step", actor="ann")
    todo.collect_events()
    cache.put(todo)
    todo.check_step(UUID(todo.steps[0]["id"]), True, actor="ann")
    todo.change_title("changed after put", actor="ann")
    cached = cache.take(todo.id)
    assert cached is not None
    assert cached is not todo
    assert (cached.title, cached.steps[0]["done"], cached.version) == ("t", False, 2)
    assert cached.pending_events == []


def test_an_older_version_never_replaces_a_newer_one() -> None:
    cache = CommandCache(10)
    todo = stored_todo()
    older = todo.detached_copy()
    todo.change_title("newer", actor="ann")
    todo.collect_events()
    cache.put(todo)
    cache.put(older)
    cached = cache.take(todo.id)
    assert cached is not None
    assert (cached.version, cached.title) == (2, "newer")


def test_the_cache_is_bounded_least_recently_stored_dropped_first() -> None:
    cache = CommandCache(2)
    first, second, third = stored_todo("1"), stored_todo("2"), stored_todo("3")
    for todo in (first, second, third):
        cache.put(todo)
    assert len(cache) == 2
    assert cache.take(first.id) is None
    assert cache.take(third.id) is not None


def test_size_zero_caches_nothing() -> None:
    cache = CommandCache(0)
    todo = stored_todo()
    cache.put(todo)
    assert len(cache) == 0
    assert cache.take(todo.id) is None
