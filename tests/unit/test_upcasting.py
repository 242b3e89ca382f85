"""Event schema versioning: a v1 ``created`` event (no priority) reads as v2."""

from __future__ import annotations

import json
from uuid import uuid4

from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent
from eventsourcing.utils import get_topic

from tododb.domain import Todo


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


def test_new_created_events_are_stored_as_v2() -> None:
    transcoder = JSONTranscoder()
    Application().register_transcodings(transcoder)
    mapper: Mapper = Mapper(transcoder=transcoder)
    todo = Todo.create(owner="alice", title="New", priority="high")
    stored = mapper.to_stored_event(todo.collect_events()[0])
    state = json.loads(stored.state)
    assert state["class_version"] == 2
    assert state["priority"] == "high"
