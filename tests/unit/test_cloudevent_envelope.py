"""The relay's CloudEvents mapping: the contract every downstream system relies on."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from tododb import contract
from tododb.consumers.notifications.delivery import sign, verify
from tododb.contract import BadEnvelope, parse_message
from tododb.domain import PUBLIC_EVENT_TYPES, Todo, TodoList, event_id, inbox_id
from tododb.relay.decoding import OwnerCache
from tododb.relay.envelope import event_id_text, to_message


def _events() -> tuple[Todo, list[object]]:
    todo = Todo.create(owner="alice", title="Write report", due=datetime(2030, 1, 1, tzinfo=UTC))
    todo.complete()
    return todo, list(todo.collect_events())


def test_created_event_maps_to_a_structured_cloudevent() -> None:
    todo, (created, _) = _events()
    message = to_message(created, 42, "alice")

    assert message.key == str(todo.id).encode()
    assert message.headers == [("content-type", b"application/cloudevents+json")]
    envelope = json.loads(message.value)
    assert envelope == {
        "specversion": "1.0",
        "id": str(event_id(todo.id, 1)),
        "source": "/todos",
        "type": "todos.task.created",
        "subject": str(todo.id),
        "time": envelope["time"],
        "datacontenttype": "application/json",
        "sequence": "42",
        "aggregateversion": 1,
        "owner": "alice",
        "actor": "alice",
        "data": {
            "owner": "alice",
            "title": "Write report",
            "description": "",
            "due": "2030-01-01T00:00:00+00:00",
            "priority": "normal",
            "tags": [],
            "list_id": str(inbox_id("alice")),
            "order_key": todo.order_key,
            "assignee": None,
            "recurrence": None,
        },
    }
    assert envelope["time"].endswith("Z")
    assert datetime.fromisoformat(envelope["time"]) == created.timestamp  # type: ignore[attr-defined]
    assert message.event_id == envelope["id"]
    assert message.position == 42


def test_resend_keeps_the_event_id_and_parse_round_trips() -> None:
    todo, (_, completed) = _events()
    first = to_message(completed, 7, "alice")
    again = to_message(completed, 7, "alice")
    assert first.event_id == again.event_id == str(event_id(todo.id, 2))

    parsed = parse_message(first.value, first.key, first.headers)
    assert parsed.id == first.event_id
    assert parsed.type == "todos.task.completed"
    assert UUID(parsed.todo_id) == todo.id
    assert (parsed.owner, parsed.sequence, parsed.version) == ("alice", 7, 2)
    assert parsed.actor == "alice"
    assert parsed.data == {"next_due": None}
    assert parsed.time == completed.timestamp  # type: ignore[attr-defined]
    assert parsed.is_task_event
    assert not parsed.is_list_event
    assert parsed.list_id is None  # only created and moved name the list


def test_the_actor_is_an_envelope_attribute_and_defaults_to_the_owner() -> None:
    """Each event's actor goes to the ``actor`` attribute (not ``data``); an event stored
    before actors were recorded (actor None) is the owner's own."""
    todo = Todo.create(owner="alice", title="Shared", list_id=uuid4(), actor="bob")
    todo.assign("carol", actor="bob")
    todo.change_title("Shared (edited)")  # no actor: as an event of before lists reads
    created, assigned, renamed = todo.collect_events()

    messages = [to_message(e, n, "alice") for n, e in enumerate((created, assigned, renamed))]
    envelopes = [json.loads(m.value) for m in messages]
    assert [e["actor"] for e in envelopes] == ["bob", "bob", "alice"]
    assert all("actor" not in e["data"] for e in envelopes)
    assert envelopes[1]["type"] == contract.TASK_ASSIGNED
    assert envelopes[1]["data"] == {"assignee": "carol"}
    parsed = [parse_message(m.value, m.key, m.headers) for m in messages]
    assert [p.actor for p in parsed] == ["bob", "bob", "alice"]
    assert parsed[0].list_id == str(todo.list_id)


def test_a_1_0_message_without_actor_parses_with_the_owner_as_actor() -> None:
    """Messages published under contract 1.0 (no ``actor``) stay valid: old consumers'
    parsing keeps working, and the actor then was always the owner."""
    value = json.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid4()),
            "source": "/todos",
            "type": "todos.task.created",
            "subject": str(uuid4()),
            "time": "2030-01-01T09:00:00Z",
            "datacontenttype": "application/json",
            "sequence": "5",
            "aggregateversion": 1,
            "owner": "alice",
            "data": {
                "owner": "alice",
                "title": "Old",
                "description": "",
                "due": None,
                "priority": "normal",
                "tags": [],
            },
        }
    ).encode()
    event = parse_message(value)
    assert (event.owner, event.actor) == ("alice", "alice")
    assert event.list_id is None  # a todo of before lists: its owner's Inbox
    with pytest.raises(BadEnvelope):
        parse_message(value.replace(b'"data"', b'"actor": 7, "data"'))


def test_list_events_are_keyed_by_the_list_with_its_creator_as_owner() -> None:
    shared = TodoList.create(owner="alice", name="Groceries")
    shared.set_member("bob", "editor", actor="alice")
    shared.rename("Food", actor="alice")
    shared.remove_member("bob", actor="bob")  # bob leaves
    shared.delete(actor="alice")
    events = shared.collect_events()
    messages = [to_message(e, 100 + n, "alice") for n, e in enumerate(events)]
    parsed = [parse_message(m.value, m.key, m.headers) for m in messages]

    assert {m.key for m in messages} == {str(shared.id).encode()}
    assert [p.type for p in parsed] == [
        contract.LIST_CREATED,
        contract.LIST_MEMBER_SET,
        contract.LIST_RENAMED,
        contract.LIST_MEMBER_REMOVED,
        contract.LIST_DELETED,
    ]
    assert [p.version for p in parsed] == [1, 2, 3, 4, 5]
    assert [p.actor for p in parsed] == ["alice", "alice", "alice", "bob", "alice"]
    assert {p.owner for p in parsed} == {"alice"}
    assert all(p.is_list_event and p.list_id == str(shared.id) for p in parsed)
    assert [p.data for p in parsed] == [
        {"owner": "alice", "name": "Groceries", "inbox": False},
        {"user": "bob", "role": "editor"},
        {"name": "Food"},
        {"user": "bob"},
        {},
    ]
    inbox = TodoList.create_inbox("carol")
    (created,) = inbox.collect_events()
    message = parse_message(to_message(created, 1, "carol").value)
    assert (message.todo_id, message.data["inbox"]) == (str(inbox_id("carol")), True)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"[]",
        b'{"specversion": "1.0", "id": "x", "source": "/todos", "type": "t"}',
        # Well-formed CloudEvent, but no owner extension and a subject that is no UUID.
        b'{"specversion": "1.0", "id": "x", "source": "/todos", "type": "todos.task.created",'
        b' "subject": "nope", "time": "2030-01-01T00:00:00Z", "sequence": "1",'
        b' "aggregateversion": 1, "data": {}}',
    ],
)
def test_bad_messages_are_reported_as_bad_envelopes(value: bytes) -> None:
    with pytest.raises(BadEnvelope):
        parse_message(value)


def test_owner_cache_is_bounded_and_keeps_recent_entries() -> None:
    cache = OwnerCache(capacity=2)
    a, b, c = (UUID(int=i) for i in range(3))
    cache.put(a, "alice")
    cache.put(b, "bob")
    assert cache.get(a) == "alice"  # a is now the most recent
    cache.put(c, "carol")
    assert cache.get(b) is None
    assert (cache.get(a), cache.get(c)) == ("alice", "carol")


def test_webhook_signature_covers_timestamp_and_body() -> None:
    body = b'{"id":1}'
    signature = sign("s3cret-s3cret-s3cret", 1_700_000_000, body)
    assert signature.startswith("sha256=")
    assert len(signature) == 7 + 64
    assert verify("s3cret-s3cret-s3cret", "1700000000", body, signature)
    assert not verify("s3cret-s3cret-s3cret", "1700000001", body, signature)
    assert not verify("s3cret-s3cret-s3cret", "1700000000", body + b" ", signature)
    assert not verify("another-secret-xxxx", "1700000000", body, signature)


def test_event_id_text_is_the_uuid5_event_id() -> None:
    for version in (1, 2, 9, 10, 123_456):
        todo_id = uuid4()
        assert event_id_text(todo_id, version) == str(event_id(todo_id, version))


def test_the_contract_names_exactly_the_domain_events() -> None:
    """The contract is typed apart from the domain (it imports none of it); this keeps
    the two in step: every domain event is published, and nothing else is named."""
    assert sorted(contract.EVENT_TYPES) == sorted(PUBLIC_EVENT_TYPES.values())
    assert len(set(contract.EVENT_TYPES)) == len(contract.EVENT_TYPES)


def test_the_readme_examples_are_valid_contract_messages() -> None:
    """The README shows a list's and a todo's lives as messages: each parses, every type is
    there, and each aggregate's examples are its life in order (versions 1, 2, ...)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lines = [ln for ln in readme.splitlines() if ln.startswith('{"id": ') and '"type"' in ln]
    parsed = [
        contract.parse_message(json.dumps({"specversion": "1.0", **json.loads(ln)}).encode())
        for ln in lines
    ]
    assert sorted({e.type for e in parsed}) == sorted(contract.EVENT_TYPES)
    versions: dict[str, list[int]] = {}
    for e in parsed:
        versions.setdefault(e.aggregate_id, []).append(e.version)
        assert e.id == str(event_id(UUID(e.aggregate_id), e.version))
    assert all(v == list(range(1, len(v) + 1)) for v in versions.values()), versions
    assert [e.sequence for e in parsed] == sorted(e.sequence for e in parsed)
