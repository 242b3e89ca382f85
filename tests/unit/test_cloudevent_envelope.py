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
from tododb.domain import PUBLIC_EVENT_TYPES, Todo, event_id
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
        "data": {
            "owner": "alice",
            "title": "Write report",
            "description": "",
            "due": "2030-01-01T00:00:00+00:00",
            "priority": "normal",
            "tags": [],
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
    assert parsed.data == {}
    assert parsed.time == completed.timestamp  # type: ignore[attr-defined]


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
    """The README shows one message per event type: each parses, and all types are there."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lines = [ln for ln in readme.splitlines() if ln.startswith('{"id": ') and '"type"' in ln]
    parsed = [
        contract.parse_message(json.dumps({"specversion": "1.0", **json.loads(ln)}).encode())
        for ln in lines
    ]
    assert sorted(e.type for e in parsed) == sorted(contract.EVENT_TYPES)
    assert [e.version for e in parsed] == list(range(1, len(parsed) + 1))
