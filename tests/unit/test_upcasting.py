"""Event schema versioning: a v1 ``created`` event (no priority) reads as v2."""

from __future__ import annotations

import json
from uuid import uuid4

from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent
from eventsourcing.utils import get_topic

from tododb.domain import Todo, inbox_id


def v1_created_state(todo_id: str) -> bytes:
    # What the first release wrote: no "priority" and no "class_version" key.
    return json.dumps(
        {
            "timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-02T03:04:05+00:00"},
            "originator_topic": get_topic(Todo),
            "owner": "alice",
            "title": "Old todo",
            "description": "",
            "due": None,
            "tags": [],
        }
    ).encode()


def test_v1_created_event_is_upcast_with_normal_priority() -> None:
    transcoder = JSONTranscoder()
    Application().register_transcodings(transcoder)
    mapper: Mapper = Mapper(transcoder=transcoder)
    todo_id = uuid4()
    stored = StoredEvent(
        originator_id=todo_id,
        originator_version=1,
        topic=get_topic(Todo.Created),
        state=v1_created_state(todo_id.hex),
    )
    event = mapper.to_domain_event(stored)
    assert isinstance(event, Todo.Created)
    assert event.priority == "normal"
    todo = event.mutate(None)
    assert todo.priority == "normal"
    assert todo.title == "Old todo"


def test_new_created_events_are_stored_as_v3() -> None:
    transcoder = JSONTranscoder()
    Application().register_transcodings(transcoder)
    mapper: Mapper = Mapper(transcoder=transcoder)
    todo = Todo.create(owner="alice", title="New", priority="high")
    stored = mapper.to_stored_event(todo.collect_events()[0])
    state = json.loads(stored.state)
    assert state["class_version"] == 3
    assert state["priority"] == "high"
    assert state["actor"] == "alice"


def mapper() -> Mapper:
    transcoder = JSONTranscoder()
    Application().register_transcodings(transcoder)
    return Mapper(transcoder=transcoder)


def test_v1_and_v2_events_read_into_the_owners_inbox_with_the_owner_as_actor() -> None:
    """Pre-list events: the todo lands in its owner's Inbox, placed by its creation time."""
    m = mapper()
    first, second = uuid4(), uuid4()
    v2 = json.loads(v1_created_state(first.hex))
    v2.update(class_version=2, priority="high")
    later = dict(v2, timestamp={"_type_": "datetime_iso", "_data_": "2026-01-03T00:00:00+00:00"})
    old_title_changed = {
        "timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-04T00:00:00+00:00"},
        "originator_topic": get_topic(Todo),
        "title": "Renamed",
    }
    events = [
        m.to_domain_event(StoredEvent(first, 1, get_topic(Todo.Created), json.dumps(v2).encode())),
        m.to_domain_event(
            StoredEvent(
                first, 2, get_topic(Todo.TitleChanged), json.dumps(old_title_changed).encode()
            )  # type: ignore[attr-defined]
        ),
    ]
    todo = events[1].mutate(events[0].mutate(None))
    assert isinstance(todo, Todo)
    assert (todo.list_id, todo.title, todo.priority) == (inbox_id("alice"), "Renamed", "high")
    assert (events[0].actor, events[1].actor) == ("alice", None)  # None: the owner
    assert (todo.assignee, todo.recurrence, todo.steps) == (None, None, [])
    other = m.to_domain_event(
        StoredEvent(second, 1, get_topic(Todo.Created), json.dumps(later).encode())
    ).mutate(None)
    assert todo.order_key < other.order_key  # created earlier, placed earlier


def test_v1_completed_and_deleted_events_read_as_plain_completion_and_deletion() -> None:
    m = mapper()
    todo_id = uuid4()
    stamp = {"_type_": "datetime_iso", "_data_": "2026-01-04T00:00:00+00:00"}
    base = {"timestamp": stamp, "originator_topic": get_topic(Todo)}
    created = m.to_domain_event(
        StoredEvent(todo_id, 1, get_topic(Todo.Created), v1_created_state(todo_id.hex))
    )
    completed = m.to_domain_event(
        StoredEvent(todo_id, 2, get_topic(Todo.Completed), json.dumps(base).encode())
    )
    deleted = m.to_domain_event(
        StoredEvent(todo_id, 3, get_topic(Todo.Deleted), json.dumps(base).encode())
    )
    todo = deleted.mutate(completed.mutate(created.mutate(None)))
    assert isinstance(todo, Todo)
    assert (todo.status, todo.deleted, todo.completions) == ("completed", True, 0)
    assert (completed.next_due, deleted.reason, deleted.actor) == (None, "deleted", None)
