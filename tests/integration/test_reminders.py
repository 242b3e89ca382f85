"""Reminders on real servers: commands over HTTP → event store → relay → Kafka (Tansu) →
the notifications service, whose schedule (its own state, from the events) fires each
reminder once, at its time, to the assignee or else every member, and to their webhooks.

In-process services run the scheduler on a clock the test moves (``FakeClock``): no
waiting for the reminder's time. The kill -9 test runs `todo consumer notifications` as a
real process on the real clock, with the reminder a few seconds ahead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.downstream import WebhookReceiver, eventually, kafka_settings, running, unique
from tododb.application import TodoApplication
from tododb.consumers.notifications.reminders import REMINDER_TYPE, reminder_id
from tododb.consumers.runner import NotificationsService
from tododb.devservers.tansu import BrokerHandle
from tododb.domain import TodoList
from tododb.entrypoints.bootstrap import build_relay
from tododb.entrypoints.supervisor import todo_command
from tododb.infra.settings import Settings

pytestmark = pytest.mark.integration

SECRET = "webhook-secret-0123456789"


class FakeClock:
    """The scheduler's time: starts now, moves only when told."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def move_to(self, at: datetime, *services: NotificationsService) -> None:
        self.now = at
        for service in services:
            service.scheduler.poke()


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class World:
    """A test's users, their webhooks, and the HTTP client."""

    def __init__(self, client: TestClient, auth: Callable[..., dict[str, str]]) -> None:
        self.client = client
        self.auth = auth
        self.receivers: dict[str, WebhookReceiver] = {}

    def user(self, name: str) -> str:
        """A new user with a webhook of their own."""
        user = unique(name)
        receiver = self.receivers[user] = WebhookReceiver()
        r = self.client.post(
            "/v1/webhooks", json={"url": receiver.url, "secret": SECRET}, headers=self.auth(user)
        )
        assert r.status_code == 201, r.text
        return user

    def create(self, user: str, **body: Any) -> str:
        r = self.client.post("/v1/todos", json=body, headers=self.auth(user))
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def patch(self, user: str, todo_id: str, **body: Any) -> None:
        r = self.client.patch(f"/v1/todos/{todo_id}", json=body, headers=self.auth(user))
        assert r.status_code == 200, r.text

    def calls(self, user: str, todo_id: str) -> list[dict[str, Any]]:
        """The webhook calls ``user`` got about ``todo_id``'s reminders."""
        return [
            b
            for b in self.receivers[user].bodies()
            if b["todo_id"] == todo_id and b["type"] == REMINDER_TYPE
        ]

    def close(self) -> None:
        for receiver in self.receivers.values():
            receiver.close()


@pytest.fixture
def world(client: TestClient, auth: Callable[..., dict[str, str]]) -> Iterator[World]:
    w = World(client, auth)
    yield w
    w.close()


def shared_list(todo_app: TodoApplication, owner: str, *members: str) -> str:
    home = TodoList.create(owner=owner, name="Home")
    for member in members:
        home.set_member(member, "editor", actor=owner)
    todo_app.save(home)
    return str(home.id)


def reminded(database_url: str, todo_id: str) -> dict[str, list[dict[str, Any]]]:
    """user → the reminder notifications they have about ``todo_id``."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT owner, event_id, message, data, occurred_at, actor "
            "FROM notifications.notifications WHERE todo_id = %s AND type = %s ORDER BY id",
            (todo_id, REMINDER_TYPE),
        ).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for owner, event, message, data, occurred_at, actor in rows:
        out.setdefault(owner, []).append(
            {"event_id": event, "message": message, "data": data, "at": occurred_at, "actor": actor}
        )
    return out


def schedule(database_url: str, todo_id: str) -> dict[str, Any] | None:
    """The todo's row of the service's schedule."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT remind_at, pending, fired_remind_at FROM notifications.reminders "
            "WHERE todo_id = %s",
            (todo_id,),
        ).fetchone()
    return None if row is None else dict(zip(("remind_at", "pending", "fired"), row, strict=True))


async def armed(database_url: str, todo_id: str, at: datetime | None) -> None:
    """Wait until the service's schedule has ``todo_id`` armed for ``at`` (None: disarmed)."""

    def check() -> bool:
        row = schedule(database_url, todo_id)
        if at is None:
            return row is not None and not row["pending"]
        return row is not None and row["pending"] and row["remind_at"] == at

    await eventually(check, what=f"{todo_id} armed for {at}")


async def members_known(database_url: str, list_id: str, members: set[str]) -> None:
    """Wait until the consumer has the list's members: its events travel on the list's key,
    apart from its todos', so they may come after a reminder is armed (under load, late
    enough for the reminder to fire to whoever it knew of then)."""

    def check() -> bool:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT user_id FROM notifications.list_members WHERE list_id = %s", (list_id,)
            ).fetchall()
        return {r[0] for r in rows} == members

    await eventually(check, what=f"the members of {list_id}")


async def looked(clock: FakeClock, *services: NotificationsService) -> None:
    """Wait until every scheduler has fired what is due at the clock's time."""
    await eventually(
        lambda: all(
            s.scheduler.looked_at is not None and s.scheduler.looked_at >= clock.now
            for s in services
        ),
        what="the schedulers to look at the schedule",
    )


async def handled(database_url: str, todo_id: str, version: int) -> None:
    """Wait until the consumer handled the todo's event of ``version``."""
    from tododb.domain import event_id

    def check() -> bool:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT 1 FROM notifications.inbox WHERE event_id = %s",
                (event_id(UUID(todo_id), version),),
            ).fetchone()
        return row is not None

    await eventually(check, what=f"event {version} of {todo_id} handled")


@pytest.mark.asyncio(loop_scope="session")
async def test_fires_at_its_time_for_the_assignee_else_every_member_and_their_webhooks(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
    todo_app: TodoApplication,
    world: World,
) -> None:
    s = kafka_settings(settings, kafka_broker)
    clock = FakeClock()
    alice, bob, carol = world.user("alice"), world.user("bob"), world.user("carol")
    home = shared_list(todo_app, alice, bob, carol)
    at = (clock.now + timedelta(hours=1)).replace(microsecond=0)
    service = NotificationsService(s, database_url, group_id=unique("notify"), clock=clock)
    async with running(build_relay(s, database_url).run, service.run):
        assigned = world.create(
            alice, title="Call the plumber", list_id=home, assignee=bob, remind_at=iso(at)
        )
        everyone = world.create(carol, title="Water the plants", list_id=home, remind_at=iso(at))
        await armed(database_url, assigned, at)
        await armed(database_url, everyone, at)
        await members_known(database_url, home, {alice, bob, carol})

        clock.move_to(at - timedelta(seconds=1), service)
        await looked(clock, service)
        assert reminded(database_url, assigned) == reminded(database_url, everyone) == {}

        clock.move_to(at + timedelta(seconds=2), service)
        await eventually(lambda: len(reminded(database_url, everyone)) == 3, what="3 reminded")
        got = reminded(database_url, assigned)
        assert list(got) == [bob]  # the assignee only
        (note,) = got[bob]
        assert note["message"] == 'Reminder: "Call the plumber"'
        assert note["event_id"] == reminder_id(assigned, at)
        assert note["at"] == at
        assert note["actor"] is None  # nobody acted: the time came
        assert note["data"] == {
            "remind_at": at.isoformat(),
            "late": False,
            "late_seconds": 2.0,
            "set_by": alice,
        }
        got = reminded(database_url, everyone)
        assert sorted(got) == sorted([alice, bob, carol])  # every member, the setter too
        assert all(len(notes) == 1 for notes in got.values())
        assert schedule(database_url, everyone) == {"remind_at": at, "pending": False, "fired": at}

        # Delivered to the webhooks (the outbox), once each.
        await eventually(lambda: len(world.calls(bob, assigned)) == 1, what="bob's call")
        for user in (alice, bob, carol):
            await eventually(lambda u=user: world.calls(u, everyone), what=f"{user}'s call")
        (call,) = world.calls(bob, assigned)
        assert call["event_id"] == str(reminder_id(assigned, at))
        assert call["data"]["late"] is False
        clock.move_to(at + timedelta(hours=1), service)
        await looked(clock, service)
        assert len(reminded(database_url, everyone)[alice]) == 1
        assert service.scheduler.fired >= 2


@pytest.mark.asyncio(loop_scope="session")
async def test_a_changed_time_reschedules_and_complete_delete_clear_cancel(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
    world: World,
) -> None:
    s = kafka_settings(settings, kafka_broker)
    clock = FakeClock()
    dave = world.user("dave")
    first = (clock.now + timedelta(hours=1)).replace(microsecond=0)
    later = first + timedelta(hours=1)
    service = NotificationsService(s, database_url, group_id=unique("notify"), clock=clock)
    async with running(build_relay(s, database_url).run, service.run):
        moved = world.create(dave, title="Moved", remind_at=iso(first))
        completed = world.create(dave, title="Completed", remind_at=iso(first))
        deleted = world.create(dave, title="Deleted", remind_at=iso(first))
        cleared = world.create(dave, title="Cleared", remind_at=iso(first))
        reopened = world.create(dave, title="Reopened", remind_at=iso(first))
        recurring = world.create(
            dave,
            title="Recurring",
            due=iso(first),
            recurrence="FREQ=DAILY",
            remind_at=iso(first),
        )
        for todo in (moved, completed, deleted, cleared, recurring, reopened):
            await armed(database_url, todo, first)

        world.patch(dave, moved, remind_at=iso(later))
        r = world.client.post(f"/v1/todos/{completed}/complete", headers=world.auth(dave))
        assert r.status_code == 200, r.text
        r = world.client.delete(f"/v1/todos/{deleted}", headers=world.auth(dave))
        assert r.status_code == 204, r.text
        world.patch(dave, cleared, remind_at=None)
        # A recurring todo's completion rolls it on: it is not done, its reminder stays.
        r = world.client.post(f"/v1/todos/{recurring}/complete", headers=world.auth(dave))
        assert r.status_code == 200, r.text
        # Completed, then reopened before its time: armed again.
        r = world.client.post(f"/v1/todos/{reopened}/complete", headers=world.auth(dave))
        assert r.status_code == 200, r.text
        await armed(database_url, reopened, None)
        r = world.client.post(f"/v1/todos/{reopened}/reopen", headers=world.auth(dave))
        assert r.status_code == 200, r.text
        await armed(database_url, moved, later)
        await armed(database_url, reopened, first)
        for todo in (completed, deleted, cleared):
            await armed(database_url, todo, None)
        await handled(database_url, recurring, 3)

        clock.move_to(first + timedelta(minutes=1), service)
        await eventually(lambda: reminded(database_url, recurring), what="the recurring one")
        await eventually(lambda: reminded(database_url, reopened), what="the reopened one")
        await looked(clock, service)
        for todo in (moved, completed, deleted, cleared):
            assert reminded(database_url, todo) == {}, todo

        clock.move_to(later + timedelta(seconds=1), service)
        await eventually(lambda: reminded(database_url, moved), what="the moved reminder")
        ((note,),) = reminded(database_url, moved).values()
        assert note["data"]["remind_at"] == later.isoformat()
        await eventually(lambda: world.calls(dave, moved), what="the moved reminder's call")
    assert [len(world.calls(dave, t)) for t in (moved, completed, deleted, cleared)] == [1, 0, 0, 0]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_reminder_due_while_the_service_was_down_comes_late(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
    world: World,
) -> None:
    s = kafka_settings(settings, kafka_broker)
    clock = FakeClock()
    erin = world.user("erin")
    at = (clock.now + timedelta(hours=1)).replace(microsecond=0)
    group = unique("notify")
    relay = build_relay(s, database_url)
    first = NotificationsService(s, database_url, group_id=group, clock=clock)
    async with running(relay.run, first.run):
        todo = world.create(erin, title="Renew passport", remind_at=iso(at))
        await armed(database_url, todo, at)
    # Down for three hours, the reminder's time among them.
    clock.now = at + timedelta(hours=2)
    again = NotificationsService(s, database_url, group_id=group, clock=clock)
    async with running(again.run):
        await eventually(lambda: reminded(database_url, todo), what="the late reminder")
        await eventually(lambda: world.calls(erin, todo), what="its webhook call")
    ((note,),) = reminded(database_url, todo).values()
    assert note["data"] == {
        "remind_at": at.isoformat(),
        "late": True,
        "late_seconds": 7200.0,
        "set_by": erin,
    }
    (call,) = world.calls(erin, todo)
    assert call["data"]["late"] is True


@pytest.mark.asyncio(loop_scope="session")
async def test_two_services_at_once_fire_each_reminder_once(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
    todo_app: TodoApplication,
    world: World,
) -> None:
    s = kafka_settings(settings, kafka_broker, reminder_batch_size=3)
    clock = FakeClock()
    frank, grace = world.user("frank"), world.user("grace")
    home = shared_list(todo_app, frank, grace)
    at = (clock.now + timedelta(hours=1)).replace(microsecond=0)
    group = unique("notify")
    one = NotificationsService(s, database_url, group_id=group, clock=clock)
    two = NotificationsService(s, database_url, group_id=group, clock=clock)
    async with running(build_relay(s, database_url).run, one.run, two.run):
        todos = [
            world.create(frank, title=f"Chore {i}", list_id=home, remind_at=iso(at))
            for i in range(12)
        ]
        for todo in todos:
            await armed(database_url, todo, at)
        await members_known(database_url, home, {frank, grace})
        clock.move_to(at, one, two)  # both wake for the same due rows

        def all_reminded() -> bool:
            return all(len(reminded(database_url, t)) == 2 for t in todos)

        await eventually(all_reminded, what="every todo's members reminded")
        await looked(clock, one, two)
        for todo in todos:
            assert {u: len(n) for u, n in reminded(database_url, todo).items()} == {
                frank: 1,
                grace: 1,
            }
        for user in (frank, grace):
            await eventually(
                lambda u=user: all(world.calls(u, t) for t in todos), what=f"{user}'s calls"
            )
        # Even a row armed again by mistake (or a claim a crashed service lost) cannot
        # notify twice: (todo, remind_at, recipient) is a unique key.
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "UPDATE notifications.reminders SET pending = true WHERE todo_id = ANY(%s)",
                ([UUID(t) for t in todos],),
            )
        notified = one.scheduler.notified + two.scheduler.notified
        clock.move_to(at + timedelta(seconds=1), one, two)
        await eventually(
            lambda: all(not (schedule(database_url, t) or {}).get("pending") for t in todos),
            what="the re-armed rows taken",
        )
        await looked(clock, one, two)
        assert one.scheduler.notified + two.scheduler.notified == notified == 24
    for user in (frank, grace):
        bodies = [b for b in world.receivers[user].bodies() if b["type"] == REMINDER_TYPE]
        assert sorted(b["todo_id"] for b in bodies) == sorted(todos), bodies


# ---- a real process, killed -------------------------------------------------------------


@contextmanager
def notifications_process(
    database_url: str, s: Settings, folder: Path, **extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`todo consumer notifications` (group ``notifications``) on ``s``'s broker and topic."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TODO_DATA_DIR": str(folder),
        "TODO_LOG_LEVEL": "INFO",
        "TODO_KAFKA_BOOTSTRAP_SERVERS": str(s.kafka_bootstrap_servers),
        "TODO_KAFKA_TOPIC": s.kafka_topic,
        "TODO_KAFKA_IDEMPOTENCE": "false",
        "TODO_KAFKA_REQUEST_TIMEOUT_MS": "3000",
        "TODO_CONSUMER_SESSION_TIMEOUT_MS": "2000",
        "TODO_CONSUMER_HEARTBEAT_INTERVAL_MS": "300",
        "TODO_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "TODO_WEBHOOK_BACKOFF_SECONDS": "0.05",
        **{f"TODO_{k.upper()}": v for k, v in extra.items()},
    }
    with (folder / "notifications.log").open("a") as log:
        proc = subprocess.Popen(
            todo_command("consumer", "notifications"), env=env, stdout=log, stderr=log
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_kill_9_between_scheduling_and_firing_then_a_restart_fires_once(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    database_url: str,
    world: World,
    tmp_path: Path,
) -> None:
    s = kafka_settings(settings, kafka_broker)
    heidi = world.user("heidi")
    late_after = {"reminder_late_after_seconds": "1"}
    async with running(build_relay(s, database_url).run):
        with notifications_process(database_url, s, tmp_path, **late_after) as proc:
            # Consuming already (it joined the group): a first todo is handled.
            warm = world.create(heidi, title="Warm up")
            await handled(database_url, warm, 1)
            at = datetime.now(UTC) + timedelta(seconds=5)
            todo = world.create(heidi, title="Take the cake out", remind_at=iso(at))
            await armed(database_url, todo, at)
            assert reminded(database_url, todo) == {}  # scheduled, not fired
            os.kill(proc.pid, signal.SIGKILL)
            assert await asyncio.to_thread(proc.wait, 30) == -signal.SIGKILL

        # Its time comes and goes (by two seconds: late) with the service dead.
        await eventually(
            lambda: datetime.now(UTC) > at + timedelta(seconds=2), what="the time to pass"
        )
        assert reminded(database_url, todo) == {}
        with notifications_process(database_url, s, tmp_path, **late_after):
            await eventually(lambda: reminded(database_url, todo), what="the reminder")
            await eventually(lambda: world.calls(heidi, todo), what="its webhook call")
            # It goes on consuming; the reminder stays fired.
            world.patch(heidi, warm, title="Warmed up")
            await handled(database_url, warm, 2)
        assert schedule(database_url, todo) == {"remind_at": at, "pending": False, "fired": at}
    ((note,),) = reminded(database_url, todo).values()
    assert note["data"]["late"] is True
    assert note["data"]["late_seconds"] > 2
    assert len(world.calls(heidi, todo)) == 1
