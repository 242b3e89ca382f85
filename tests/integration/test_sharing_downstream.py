"""Lists downstream: the notifications consumer fans out to a todo's list members but the
actor, following the lists' events; analytics count per actor. On real PostgreSQL, the
events built by the domain and encoded by the relay's own code (the Kafka path is in
``test_downstream_e2e.py``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

import psycopg
import pytest
import pytest_asyncio
from psycopg.rows import DictRow, dict_row

from tests.downstream import unique
from tododb import contract
from tododb.consumers.analytics.handler import AnalyticsHandler
from tododb.consumers.analytics.store import AnalyticsStore
from tododb.consumers.core import ConsumerService, Handler
from tododb.consumers.notifications.handler import NotificationsHandler
from tododb.consumers.notifications.store import NotificationsStore
from tododb.contract import TodoEvent, parse_message
from tododb.domain import Todo, TodoList, key_between
from tododb.infra.settings import Settings
from tododb.relay.envelope import to_message

pytestmark = pytest.mark.integration


class Feed:
    """Publishes aggregates' new events to a consumer as the relay and Kafka would hand
    them over (one log position each), straight into its handling transaction."""

    position = 0

    def __init__(self, consumer: ConsumerService) -> None:
        self.consumer = consumer
        self.handled: list[TodoEvent] = []

    async def __call__(self, *aggregates: Todo | TodoList) -> list[TodoEvent]:
        events = []
        for aggregate in aggregates:
            for event in aggregate.collect_events():
                Feed.position += 1
                message = to_message(event, Feed.position, aggregate.owner)
                events.append(parse_message(message.value, message.key, message.headers))
        for parsed in events:
            await self.consumer._handle_once(parsed)
        self.handled += events
        return events

    async def again(self) -> None:
        """Redeliver everything handled so far."""
        for parsed in self.handled:
            await self.consumer._handle_once(parsed)


async def _consumer(settings: Settings, database_url: str, handler: Handler) -> ConsumerService:
    consumer = ConsumerService(settings, database_url, handler, group_id="unused")
    await consumer.prepare(asyncio.Event())
    return consumer


@pytest_asyncio.fixture(loop_scope="session")
async def notify(settings: Settings, database_url: str) -> AsyncIterator[Feed]:
    consumer = await _consumer(settings, database_url, NotificationsHandler())
    yield Feed(consumer)
    await consumer.close()


@pytest_asyncio.fixture(loop_scope="session")
async def count(settings: Settings, database_url: str) -> AsyncIterator[Feed]:
    consumer = await _consumer(settings, database_url, AnalyticsHandler())
    yield Feed(consumer)
    await consumer.close()


@pytest.fixture
def connect(database_url: str) -> Callable[[], AbstractContextManager[psycopg.Connection[DictRow]]]:
    return lambda: psycopg.connect(database_url, row_factory=dict_row)


@pytest.fixture
def people() -> tuple[str, str, str, str]:
    return unique("alice"), unique("bob"), unique("carol"), unique("dave")


def notified(database_url: str, todo: Todo) -> dict[str, list[str]]:
    """user → their notifications about ``todo``, in order."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT owner, message FROM notifications.notifications WHERE todo_id = %s ORDER BY id",
            (todo.id,),
        ).fetchall()
    out: dict[str, list[str]] = {}
    for user, message in rows:
        out.setdefault(user, []).append(message)
    return out


def shared_list(alice: str, bob: str, carol: str) -> TodoList:
    """alice's list, shared with bob (editor) and carol (viewer)."""
    home = TodoList.create(owner=alice, name="Home")
    home.set_member(bob, "editor", actor=alice)
    home.set_member(carol, "viewer", actor=alice)
    return home


@pytest.mark.asyncio(loop_scope="session")
async def test_notifications_go_to_every_member_but_the_actor_and_to_their_webhooks(
    notify: Feed,
    database_url: str,
    connect: Callable[[], AbstractContextManager[psycopg.Connection[DictRow]]],
    people: tuple[str, str, str, str],
) -> None:
    alice, bob, carol, _ = people
    store = NotificationsStore(connect)
    hooks = {
        u: store.add_webhook(u, f"https://example.com/{u}", "s" * 20, limit=5)["id"]
        for u in (alice, bob, carol)
    }
    home = shared_list(alice, bob, carol)
    await notify(home)
    todo = Todo.create(owner=alice, title="Paint", list_id=home.id, actor=alice)
    await notify(todo)  # the owner acts: editor and viewer are notified
    todo.complete(actor=bob)
    await notify(todo)  # the editor acts: owner and viewer

    want = {
        alice: ['Completed "Paint"'],
        bob: ['New todo "Paint"'],
        carol: ['New todo "Paint"', 'Completed "Paint"'],
    }
    assert notified(database_url, todo) == want
    await notify.again()  # a redelivery of everything: no second effect anywhere
    assert notified(database_url, todo) == want

    with psycopg.connect(database_url) as conn:
        deliveries = conn.execute(
            "SELECT d.webhook_id, n.owner, n.actor, n.message FROM notifications.deliveries d "
            "JOIN notifications.notifications n ON n.id = d.notification_id "
            "WHERE n.todo_id = %s ORDER BY d.id",
            (todo.id,),
        ).fetchall()
    assert sorted(deliveries) == sorted(
        [
            (hooks[bob], bob, alice, 'New todo "Paint"'),
            (hooks[carol], carol, alice, 'New todo "Paint"'),
            (hooks[alice], alice, bob, 'Completed "Paint"'),
            (hooks[carol], carol, bob, 'Completed "Paint"'),
        ]
    )
    feed = store.notifications(carol, before=None, limit=10)
    assert [(n["message"], n["actor"]) for n in feed[:2]] == [
        ('Completed "Paint"', bob),
        ('New todo "Paint"', alice),
    ]


@pytest.mark.asyncio(loop_scope="session")
async def test_membership_and_the_todos_list_follow_the_events(
    notify: Feed, database_url: str, people: tuple[str, str, str, str]
) -> None:
    alice, bob, carol, dave = people
    home = shared_list(alice, bob, carol)
    work = TodoList.create(owner=dave, name="Work")
    work.set_member(alice, "editor", actor=dave)
    todo = Todo.create(owner=bob, title="Fix the roof", list_id=home.id, actor=bob)
    await notify(home, work, todo)  # alice and carol

    home.remove_member(carol, actor=carol)  # carol leaves
    home.set_member(bob, "viewer", actor=alice)  # a role change keeps bob a member
    await notify(home)
    todo.set_due(datetime(2030, 1, 1, 9, tzinfo=UTC), actor=alice)
    await notify(todo)  # bob only: carol is gone
    todo.move(home.id, key_between(None, todo.order_key, todo.id), actor=alice)
    await notify(todo)  # a reorder in the list: no news
    todo.move(work.id, key_between(None, None, todo.id), actor=alice)
    await notify(todo)  # to another list: both lists' members (bob; dave)
    todo.set_due(None, actor=dave)
    await notify(todo)  # now in work: alice only (dave acted)

    assert notified(database_url, todo) == {
        alice: ['New todo "Fix the roof"', 'Due date of "Fix the roof" cleared'],
        carol: ['New todo "Fix the roof"'],
        bob: [
            'Due date of "Fix the roof" set to 2030-01-01T09:00:00+00:00',
            'Moved "Fix the roof" to another list',
        ],
        dave: ['Moved "Fix the roof" to another list'],
    }
    with psycopg.connect(database_url) as conn:
        members = conn.execute(
            "SELECT user_id, role FROM notifications.list_members WHERE list_id = %s "
            "ORDER BY user_id",
            (home.id,),
        ).fetchall()
    assert sorted(members) == sorted([(alice, "owner"), (bob, "viewer")])


@pytest.mark.asyncio(loop_scope="session")
async def test_a_deleted_lists_members_hear_of_its_todos_deletion(
    notify: Feed, database_url: str, people: tuple[str, str, str, str]
) -> None:
    alice, bob, carol, _ = people
    home = shared_list(alice, bob, carol)
    todo = Todo.create(owner=bob, title="Water plants", list_id=home.id, actor=bob)
    await notify(home, todo)
    home.delete(actor=alice)
    todo.delete(actor=alice, reason="list_deleted")
    await notify(home, todo)  # the list's deletion comes first (the worse order)
    assert notified(database_url, todo) == {
        alice: ['New todo "Water plants"'],
        carol: ['New todo "Water plants"', 'Deleted "Water plants"'],
        bob: ['Deleted "Water plants"'],
    }


@pytest.mark.asyncio(loop_scope="session")
async def test_a_todo_of_an_unknown_list_or_of_before_lists_notifies_its_owner(
    notify: Feed, database_url: str, people: tuple[str, str, str, str]
) -> None:
    alice, bob, _, _ = people
    # Its list's events have not come (another key): the owner stands in for the members.
    todo = Todo.create(owner=alice, title="Unlisted", list_id=uuid4(), actor=bob)
    todo.complete(actor=alice)  # the owner acts: nobody is left to notify
    todo.reopen(actor=bob)
    await notify(todo)
    assert notified(database_url, todo) == {alice: ['New todo "Unlisted"', 'Reopened "Unlisted"']}

    # A 1.0 message (before lists and actors): its actor is the owner, its list the Inbox.
    old_id = uuid4()
    old = {
        "specversion": "1.0",
        "id": str(uuid4()),
        "source": "/todos",
        "type": contract.TASK_CREATED,
        "subject": str(old_id),
        "time": "2030-01-01T09:00:00Z",
        "datacontenttype": "application/json",
        "sequence": "1",
        "aggregateversion": 1,
        "owner": alice,
        "data": {
            "owner": alice,
            "title": "Old",
            "description": "",
            "due": None,
            "priority": "normal",
            "tags": [],
        },
    }
    await notify.consumer._handle_once(parse_message(json.dumps(old).encode()))
    later = {
        **old,
        "id": str(uuid4()),
        "type": contract.TASK_DELETED,
        "aggregateversion": 2,
        "actor": bob,
        "data": {"reason": "deleted"},
    }
    await notify.consumer._handle_once(parse_message(json.dumps(later).encode()))
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT owner, message FROM notifications.notifications WHERE todo_id = %s",
            (old_id,),
        ).fetchall()
    assert rows == [(alice, 'Deleted "Old"')]

    # A type of a later contract version is skipped, not failed.
    unknown = {**old, "id": str(uuid4()), "type": "todos.task.snoozed", "aggregateversion": 3}
    await notify.consumer._handle_once(parse_message(json.dumps(unknown).encode()))


@pytest.mark.asyncio(loop_scope="session")
async def test_analytics_count_per_actor_as_well_as_per_owner(
    count: Feed,
    connect: Callable[[], AbstractContextManager[psycopg.Connection[DictRow]]],
    people: tuple[str, str, str, str],
) -> None:
    alice, bob, carol, _ = people
    home = shared_list(alice, bob, carol)
    first = Todo.create(owner=alice, title="One", list_id=home.id, actor=alice)
    second = Todo.create(owner=bob, title="Two", list_id=home.id, actor=bob)
    first.complete(actor=bob)
    second.complete(actor=bob)
    second.reopen(actor=alice)
    second.add_step("Step", actor=bob)
    home.remove_member(carol, actor=carol)
    await count(home, first, second)
    await count.again()  # redelivered: counted once

    store = AnalyticsStore(connect)
    today = datetime.now(UTC).date()
    span: tuple[date, date] = (today - timedelta(days=1), today + timedelta(days=1))
    assert store.actor_totals(alice, *span) == {
        contract.LIST_CREATED: 1,
        contract.LIST_MEMBER_SET: 2,
        contract.TASK_CREATED: 1,
        contract.TASK_REOPENED: 1,
    }
    assert store.actor_totals(bob, *span) == {
        contract.TASK_CREATED: 1,
        contract.TASK_COMPLETED: 2,
        contract.TASK_STEP_ADDED: 1,
    }
    assert store.actor_totals(carol, *span) == {contract.LIST_MEMBER_REMOVED: 1}
    (day,) = store.actor_figures(bob, *span)
    assert day["events"][contract.TASK_COMPLETED] == 2
    # Per owner, as before: each todo's events count for its owner, whoever acted.
    figures = {u: store.daily_figures(u, *span) for u in (alice, bob)}
    assert [(d["created"], d["completed"], d["reopened"]) for d in figures[alice]] == [(1, 1, 0)]
    assert [(d["created"], d["completed"], d["reopened"]) for d in figures[bob]] == [(1, 1, 1)]


def test_a_notifications_schema_of_before_lists_is_upgraded(fresh_database_url: str) -> None:
    """One notification per event was unique on ``event_id``; now one per recipient."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA notifications")
        conn.execute(
            "CREATE TABLE notifications.notifications ("
            "id bigserial PRIMARY KEY, owner text NOT NULL, event_id uuid NOT NULL UNIQUE, "
            "todo_id uuid NOT NULL, type text NOT NULL, message text NOT NULL, "
            "data jsonb NOT NULL, occurred_at timestamptz NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now())"
        )
    store = NotificationsStore(lambda: psycopg.connect(fresh_database_url, row_factory=dict_row))
    store.create_schema()
    store.create_schema()  # idempotent
    event_id, todo_id = uuid4(), uuid4()
    insert = (
        "INSERT INTO notifications.notifications (owner, event_id, todo_id, type, message, "
        "data, occurred_at, actor) VALUES (%s, %s, %s, 't', 'm', '{}', now(), 'x')"
    )
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute(insert, ("bob", event_id, todo_id))
        conn.execute(insert, ("carol", event_id, todo_id))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("carol", event_id, todo_id))
