"""How the relay builds and places messages: owners from the store, Kafka's partitioning,
list events and actors."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest
from aiokafka.partitioner import DefaultPartitioner

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.downstream import eventually, kafka_settings, read_topic, running, unique
from tododb import contract
from tododb.application import TodoApplication
from tododb.devservers.tansu import BrokerHandle
from tododb.domain import Todo, TodoList, inbox_id
from tododb.entrypoints.bootstrap import build_relay
from tododb.infra.settings import Settings
from tododb.relay.decoding import Envelopes

pytestmark = pytest.mark.integration


def test_a_range_without_the_created_events_still_gets_each_owner(
    fresh_app: TodoApplication,
) -> None:
    owners = [unique("owner") for _ in range(3)]
    todos = [fresh_app.create_todo(owners[i % 3], title=f"todo {i}").todo for i in range(9)]
    start = fresh_app.head_position() + 1  # after the creates (and the owners' Inboxes)
    for i, todo in enumerate(todos):
        fresh_app.complete_todo(owners[i % 3], todo.id)

    # A decoder that never saw the created events (a restarted relay, another process).
    messages = Envelopes(fresh_app).range(start, start + 8)

    assert [m.position for m in messages] == list(range(start, start + 9))
    for i, message in enumerate(messages):
        envelope = json.loads(message.value)
        assert envelope["type"] == "todos.task.completed"
        assert envelope["subject"] == str(todos[i].id)
        assert envelope["owner"] == owners[i % 3]
        assert envelope["actor"] == owners[i % 3]


def test_a_lists_events_get_their_owner_from_its_created_event(
    fresh_app: TodoApplication,
) -> None:
    """Like a todo's: a decoder that never saw the list's created event looks it up."""
    shared = TodoList.create(owner="alice", name="Home")
    fresh_app.save(shared)
    shared.set_member("bob", "editor", actor="alice")
    shared.remove_member("bob", actor="bob")
    fresh_app.save(shared)
    head = fresh_app.head_position()

    messages = Envelopes(fresh_app).range(head - 1, head)

    parsed = [contract.parse_message(m.value, m.key, m.headers) for m in messages]
    assert [m.key for m in messages] == [str(shared.id).encode()] * 2
    assert [(e.type, e.owner, e.actor, e.version) for e in parsed] == [
        (contract.LIST_MEMBER_SET, "alice", "alice", 2),
        (contract.LIST_MEMBER_REMOVED, "alice", "bob", 3),
    ]


@pytest.mark.asyncio(loop_scope="session")
async def test_messages_go_where_kafkas_default_partitioner_puts_them_in_log_order(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    fresh_database_url: str,
    fresh_app: TodoApplication,
) -> None:
    s = kafka_settings(settings, kafka_broker, kafka_topic_partitions=3)
    owner = unique("erin")
    for i in range(12):
        todo = fresh_app.create_todo(owner, title=f"todo {i}").todo
        fresh_app.complete_todo(owner, todo.id)
        fresh_app.reopen_todo(owner, todo.id)
    head = fresh_app.head_position()  # 36 todo events and the owner's Inbox (made on use)
    relay = build_relay(s, fresh_database_url, fresh_app)
    stop = asyncio.Event()
    producer = await relay.start_producer(stop)
    try:
        # Encoded for one partition while the topic has three (it grew meanwhile): the
        # relay must re-place every message before sending.
        messages = relay.decoder.partitioned(1, head, partitions=1)
        assert list(messages) == [0]
        assert await relay.publish(producer, messages, 1, stop) == head
    finally:
        await producer.stop()
        relay.tracking.datastore.close()

    records = await read_topic(str(s.kafka_bootstrap_servers), s.kafka_topic)
    assert len(records) == head
    default = DefaultPartitioner()
    versions: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.partition == default(record.key, [0, 1, 2], [0, 1, 2])
        assert dict(record.headers) == {"content-type": b"application/cloudevents+json"}
        versions[record.key].append(json.loads(record.value)["aggregateversion"])
    inbox = versions.pop(str(inbox_id(owner)).encode(), [])
    assert inbox in ([], [1])
    assert len(versions) == 12
    assert all(v == [1, 2, 3] for v in versions.values())
    assert head == 36 + len(inbox)


@pytest.mark.asyncio(loop_scope="session")
async def test_list_events_and_actors_reach_the_topic(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    fresh_database_url: str,
    fresh_app: TodoApplication,
) -> None:
    """A shared list's life and a todo in it, as the running relay publishes them: list
    events keyed by the list with its creator as owner; every event with its actor (an
    event stored without one, as before actors were recorded, says the owner)."""
    s = kafka_settings(settings, kafka_broker)
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    shared = TodoList.create(owner=alice, name="Home")
    shared.set_member(bob, "editor", actor=alice)
    shared.set_member(carol, "viewer", actor=alice)
    fresh_app.save(shared)
    todo = Todo.create(owner=bob, title="Paint the door", list_id=shared.id, actor=bob)
    fresh_app.save(todo)
    todo.add_step("Buy paint", actor=alice)
    todo.complete(actor=alice)
    todo.change_title("Paint the front door")  # no actor: an event of before actors
    fresh_app.save(todo)
    shared.rename("House", actor=alice)
    fresh_app.save(shared)
    head = fresh_app.head_position()

    relay = build_relay(s, fresh_database_url, fresh_app)
    async with running(relay.run):
        await eventually(lambda: relay.position() == head, what="relay at the head")
    records = await read_topic(str(s.kafka_bootstrap_servers), s.kafka_topic)

    events = sorted(
        (contract.parse_message(r.value, r.key, r.headers) for r in records),
        key=lambda e: e.sequence,
    )
    keys = {json.loads(r.value)["id"]: r.key for r in records}
    assert [(e.type, e.aggregate_id, e.owner, e.actor) for e in events] == [
        (contract.LIST_CREATED, str(shared.id), alice, alice),
        (contract.LIST_MEMBER_SET, str(shared.id), alice, alice),
        (contract.LIST_MEMBER_SET, str(shared.id), alice, alice),
        (contract.TASK_CREATED, str(todo.id), bob, bob),
        (contract.TASK_STEP_ADDED, str(todo.id), bob, alice),
        (contract.TASK_COMPLETED, str(todo.id), bob, alice),
        (contract.TASK_TITLE_CHANGED, str(todo.id), bob, bob),
        (contract.LIST_RENAMED, str(shared.id), alice, alice),
    ]
    assert all(keys[e.id] == e.aggregate_id.encode() for e in events)
    assert [e.data for e in events if e.is_list_event] == [
        {"owner": alice, "name": "Home", "inbox": False},
        {"user": bob, "role": "editor"},
        {"user": carol, "role": "viewer"},
        {"name": "House"},
    ]
    assert events[3].list_id == str(shared.id)
    assert [e.version for e in events if e.is_task_event] == [1, 2, 3, 4]
    assert all("actor" not in e.data for e in events)
