"""Poison events: quarantined with their error, later events of their todo held behind them.

Anything can reach the log (a raw insert, a topic that no longer resolves, bytes that do
not decode), and one such event must not stop the relay for every todo. So an event
that cannot be turned into a message is *quarantined*, and the later events of the same
todo are *held* (a consumer must never see version 5 of a todo before its version 4);
every other todo's events flow on and the relay's position advances.

The decision is taken in the relay's own process, in log order, from what the decoders
report (a decoder sees one range only, and several run at once): ``Quarantine`` keeps
the held todos in memory (todo key → position of its first unpublished event), so the
hot path costs one dict lookup per message, and only while something is held.
``QuarantineStore`` is the relay's table ``relay_quarantine``, in the event store's schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Composable, Identifier

from tododb.relay.decoding import Partitioned
from tododb.relay.envelope import Failure
from tododb.relay.status import QUARANTINE_TABLE

log = logging.getLogger(__name__)

QUARANTINED, HELD, SKIPPED, RELEASED = "quarantined", "held", "skipped", "released"
OPEN = (QUARANTINED, HELD)
RETRY, SKIP = "retry", "skip"


@dataclass
class Sorted:
    """One range, sorted: what to send, and what to write to the table first."""

    messages: Partitioned
    quarantined: list[Failure] = field(default_factory=list)
    held_failures: list[Failure] = field(default_factory=list)
    held: list[int] = field(default_factory=list)

    def has_rows(self) -> bool:
        return bool(self.quarantined or self.held_failures or self.held)


class Quarantine:
    """The held todos, in memory: todo key → position of its first unpublished event.

    ``resolved`` are the positions skipped or released by hand: when a range is read
    again (a re-send after a crash, a re-publish after a broker lost data) an event
    there that still fails is left out rather than quarantined a second time.
    """

    def __init__(self) -> None:
        self.held: dict[bytes, int] = {}
        self.resolved: set[int] = set()

    def load(self, held: dict[bytes, int], resolved: set[int]) -> None:
        self.held, self.resolved = held, resolved

    def active(self, failures: Sequence[Failure]) -> bool:
        """Whether a range needs sorting at all (the common answer is no: no cost)."""
        return bool(failures) or bool(self.held)

    def sort(self, messages: Partitioned, failures: Sequence[Failure]) -> Sorted:
        """Decide in log order: a todo's first failure is quarantined, the rest held."""
        result = Sorted({})
        for failure in sorted(failures):
            self._place(failure, result)
        if not self.held:
            result.messages = messages
            return result
        held = self.held
        for partition, batch in messages.items():
            kept = []
            for m in batch:
                head = held.get(m.key)
                if head is not None and m.position >= head:
                    result.held.append(m.position)
                else:
                    kept.append(m)
            if kept:
                result.messages[partition] = kept
        return result

    def _place(self, failure: Failure, result: Sorted) -> None:
        """A todo's first unresolved failure becomes its head; any later one is held."""
        if failure.position in self.resolved:
            log.warning(
                "position %d (todo %s) was resolved by hand and still fails (%s): not published",
                failure.position,
                failure.todo_id,
                failure.error,
            )
            return
        head = self.held.get(failure.key)
        if head is not None and head <= failure.position:
            result.held_failures.append(failure)
            return
        self.held[failure.key] = failure.position
        result.quarantined.append(failure)
        log.error(
            "position %d (todo %s version %d, topic %s) cannot be published: %s; quarantined, "
            "the todo's later events are held (todo relay retry/skip %s)",
            *failure[:4],
            failure.error,
            failure.todo_id,
        )

    def settle(self, outcome: Resolution) -> None:
        """After a retry or skip: the todo is released, or held behind its new head."""
        key = outcome.todo_id.encode()
        self.resolved.update(outcome.released)
        if outcome.skipped is not None:
            self.resolved.add(outcome.skipped)
        if outcome.stuck is None:
            self.held.pop(key, None)
        else:
            self.held[key] = outcome.stuck.position


@dataclass(frozen=True)
class Resolution:
    """What a retry or skip did to one todo's open events."""

    todo_id: str
    action: str
    released: list[int]
    skipped: int | None
    stuck: Failure | None
    """The event that failed again (the todo's new head), if any."""

    @classmethod
    def of(
        cls, todo_id: str, action: str, opened: Sequence[int], stuck: Failure | None
    ) -> Resolution:
        head = opened[0]
        tried = opened if action == RETRY else opened[1:]
        released = [p for p in tried if stuck is None or p < stuck.position]
        return cls(todo_id, action, released, head if action == SKIP else None, stuck)


Connect = Callable[[], AbstractContextManager[Any]]


class QuarantineStore:
    """The table ``relay_quarantine`` (one row per quarantined or held event), and the
    retry/skip requests that ``todo relay retry|skip`` leave on a todo's head row."""

    def __init__(self, connect: Connect, schema: str, events_table: str) -> None:
        self.connect = connect
        self.schema = schema
        self.events_table = events_table

    @classmethod
    def on(cls, recorder: PostgresApplicationRecorder) -> QuarantineStore:
        """Beside the recorder's events table, on its pool."""
        return cls(
            recorder.datastore.get_connection, recorder.datastore.schema, recorder.events_table_name
        )

    def _sql(self, text: str) -> Composable:
        return SQL(text).format(
            q=Identifier(self.schema, QUARANTINE_TABLE),
            events=Identifier(self.schema, self.events_table),
        )

    def create(self) -> None:
        """The table, if missing (under a lock: relays and CLI commands may start at once)."""
        statements = [
            "CREATE TABLE IF NOT EXISTS {q} ("
            "position bigint PRIMARY KEY, originator_id uuid NOT NULL, "
            "originator_version integer NOT NULL, topic text NOT NULL, error text, "
            "quarantined_at timestamptz NOT NULL DEFAULT now(), status text NOT NULL "
            "CHECK (status IN ('quarantined', 'held', 'skipped', 'released')), "
            "request text CHECK (request IN ('retry', 'skip')), resolved_at timestamptz)",
            "CREATE INDEX IF NOT EXISTS relay_quarantine_open ON {q} (originator_id, position) "
            "WHERE status IN ('quarantined', 'held')",
        ]
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('tododb.relay.quarantine.ddl'))")
            for statement in statements:
                conn.execute(self._sql(statement))

    def load(self) -> tuple[dict[bytes, int], set[int]]:
        """The held todos (key → first open position) and the resolved positions."""
        with self.connect() as conn:
            rows = conn.execute(
                self._sql("SELECT originator_id, position, status FROM {q} ORDER BY position")
            ).fetchall()
        held: dict[bytes, int] = {}
        resolved: set[int] = set()
        for row in rows:
            if row["status"] in OPEN:
                held.setdefault(str(row["originator_id"]).encode(), row["position"])
            else:
                resolved.add(row["position"])
        return held, resolved

    def record(self, result: Sorted) -> None:
        """Write a range's quarantined and held events (before its messages are sent;
        a re-read range writes nothing twice)."""
        insert = self._sql(
            "INSERT INTO {q} (position, originator_id, originator_version, topic, error, status) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (position) DO NOTHING"
        )
        rows = [(*f, QUARANTINED) for f in result.quarantined]
        rows += [(*f, HELD) for f in result.held_failures]
        with self.connect() as conn, conn.transaction():
            if rows:
                conn.cursor().executemany(insert, rows)
            if result.held:
                conn.execute(
                    self._sql(
                        "INSERT INTO {q} (position, originator_id, originator_version, topic, "
                        "status) SELECT notification_id, originator_id, originator_version, "
                        "topic, 'held' FROM {events} WHERE notification_id = ANY(%s) "
                        "ON CONFLICT (position) DO NOTHING"
                    ),
                    (result.held,),
                )

    def request(self, todo_id: UUID, action: str) -> bool:
        """Leave ``action`` on the todo's head; False if nothing of it is quarantined."""
        with self.connect() as conn:
            cur = conn.execute(
                self._sql(
                    "UPDATE {q} SET request = %s WHERE position = (SELECT min(position) "
                    "FROM {q} WHERE originator_id = %s AND status = 'quarantined')"
                ),
                (action, todo_id),
            )
            return bool(cur.rowcount)

    def requests(self) -> list[tuple[str, str]]:
        """Pending (todo id, action) pairs, oldest quarantine first."""
        with self.connect() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT originator_id, request FROM {q} WHERE request IS NOT NULL "
                    "ORDER BY position"
                )
            ).fetchall()
        return list(dict((str(r["originator_id"]), r["request"]) for r in rows).items())

    def pending(self, todo_id: UUID) -> bool:
        """Whether a request on the todo waits for the active relay."""
        with self.connect() as conn:
            row = conn.execute(
                self._sql(
                    "SELECT count(*) AS n FROM {q} WHERE originator_id = %s AND request IS NOT NULL"
                ),
                (todo_id,),
            ).fetchone()
        return bool(row and row["n"])

    def opened(self, todo_id: str) -> list[int]:
        """The todo's quarantined and held positions, in log order (its head first)."""
        with self.connect() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT position FROM {q} WHERE originator_id = %s "
                    "AND status IN ('quarantined', 'held') ORDER BY position"
                ),
                (todo_id,),
            ).fetchall()
        return [r["position"] for r in rows]

    def resolve(self, outcome: Resolution) -> None:
        """Write a retry's or skip's outcome and clear the todo's request, in one go."""
        update = "UPDATE {q} SET status = %s, resolved_at = now() WHERE position = ANY(%s)"
        with self.connect() as conn, conn.transaction():
            conn.execute(self._sql(update), (RELEASED, outcome.released))
            if outcome.skipped is not None:
                conn.execute(self._sql(update), (SKIPPED, [outcome.skipped]))
            if outcome.stuck is not None:
                conn.execute(
                    self._sql(
                        "UPDATE {q} SET status = 'quarantined', error = %s WHERE position = %s"
                    ),
                    (outcome.stuck.error, outcome.stuck.position),
                )
            conn.execute(
                self._sql("UPDATE {q} SET request = NULL WHERE originator_id = %s"),
                (outcome.todo_id,),
            )

    def rows(
        self, todo_id: UUID | None = None, *, everything: bool = False
    ) -> list[dict[str, Any]]:
        """Rows for ``todo relay quarantine`` and retry/skip answers, JSON-ready: the open
        ones (quarantined, held) unless ``everything``, of one todo or all."""
        with self.connect() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT position, originator_id AS todo_id, originator_version AS version, "
                    "topic, status, error, quarantined_at, resolved_at, request FROM {q} "
                    "WHERE (%s OR status IN ('quarantined', 'held')) "
                    "AND (%s::uuid IS NULL OR originator_id = %s) ORDER BY position"
                ),
                (everything, todo_id, todo_id),
            ).fetchall()
        return [_jsonable(row) for row in rows]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["todo_id"] = str(out["todo_id"])
    for name in ("quarantined_at", "resolved_at"):
        if out[name] is not None:
            out[name] = out[name].isoformat()
    return out
