"""The log subscription the projections follow never sits behind a committed event.

The library's own subscription could miss an event committed between its first read and
its LISTEN (CI saw a projection stuck for a minute on a quiet log). Ours reads again once
LISTEN is in place, and every few seconds whatever happens.
"""

from __future__ import annotations

import threading

import psycopg
from eventsourcing.persistence import Notification

from tododb.application import TodoApplication
from tododb.eventstore.subscription import POLL_SECONDS, WakingSubscription


def insert_without_notify(url: str) -> int:
    """A copy of the first event under a new id, INSERTed with no NOTIFY: as if lost."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO todos_events (originator_id, originator_version, topic, state) "
            "SELECT gen_random_uuid(), 1, topic, state FROM todos_events "
            "ORDER BY notification_id LIMIT 1 RETURNING notification_id"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_an_event_whose_notification_was_lost_is_still_read(
    fresh_app: TodoApplication, fresh_database_url: str
) -> None:
    fresh_app.create_todo("olga", title="first")  # her Inbox, then the todo
    head = fresh_app.head_position()
    with fresh_app.recorder.subscribe(gt=None) as subscription:
        assert isinstance(subscription, WakingSubscription)
        assert [next(subscription).id for _ in range(head)] == list(range(1, head + 1))
        position = insert_without_notify(fresh_database_url)
        seen: list[Notification] = []
        reader = threading.Thread(target=lambda: seen.append(next(subscription)), daemon=True)
        reader.start()
        reader.join(timeout=POLL_SECONDS * 3)
        subscription.stop()
    assert [n.id for n in seen] == [position]
