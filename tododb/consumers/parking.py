"""Parking: a todo whose event could not be handled waits, in order, for an operator.

Why: a consumer that dead-letters a message and carries on handles the same todo's later
events without the missing one (analytics counts a ``completed`` whose ``created`` was
dead-lettered, a notification names the todo wrongly). So when a message is
dead-lettered, its key (the todo id) is *parked*: the message is kept in
``<schema>.parked`` and every later message of that key is appended behind it, in
order, unhandled, while other keys flow on. ``todo consumer retry`` re-handles a key's
messages in order and releases it; ``todo consumer skip`` gives up on the head first.

The table is the truth. A consumer keeps the parked keys of its group in memory (loaded
at start, after every partition assignment and every few seconds) so the hot path is a
set lookup; appending behind a key re-checks the table under the key's advisory lock,
so a key released by another process is noticed and its message handled instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from aiokafka import ConsumerRecord
from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

AsyncConn = psycopg.AsyncConnection[Any]

PARKED = "parked"
"""Waiting: the head of its key (the first failure) or behind it."""
HANDLED = "handled"
"""Re-handled by ``retry`` (kept for the record)."""
SKIPPED = "skipped"
"""Given up by ``skip`` (kept for the record)."""

REFRESH_SECONDS = 5.0
"""How stale the in-memory set of parked keys may get (a key released elsewhere)."""


@dataclass(frozen=True)
class ParkedMessage:
    """One parked message, with what is needed to handle it later exactly as it came."""

    id: int
    key: str
    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: list[tuple[str, bytes]]
    event_id: str | None
    error: str | None
    attempts: int
    status: str
    parked_at: datetime

    @property
    def kafka_key(self) -> bytes:
        return self.key.encode()


@dataclass(frozen=True)
class ParkedKey:
    """A parked key: how many messages wait, and why its head failed."""

    key: str
    count: int
    head_error: str | None
    head_attempts: int
    head_topic: str
    head_partition: int
    head_offset: int
    parked_since: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "count": self.count,
            "head_error": self.head_error,
            "head_attempts": self.head_attempts,
            "head": f"{self.head_topic}/{self.head_partition}/{self.head_offset}",
            "parked_since": self.parked_since.isoformat(),
        }


@dataclass
class Release:
    """What ``retry``/``skip`` did to a key."""

    key: str
    handled: int = 0
    skipped: int = 0
    released: bool = False
    remaining: int = 0
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(vars(self))


def record_key(record: ConsumerRecord[bytes, bytes]) -> str | None:
    """A message's Kafka key as text (the todo or list id, per the contract), or None."""
    return None if record.key is None else record.key.decode("utf-8", "replace")


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:1000]


def encode_headers(headers: Sequence[tuple[str, bytes]] | None) -> Jsonb:
    """Header values are bytes: kept as hex in the JSON."""
    return Jsonb([[name, value.hex()] for name, value in headers or ()])


def decode_headers(stored: Any) -> list[tuple[str, bytes]]:
    return [(str(name), bytes.fromhex(value)) for name, value in stored]


_COLUMNS: LiteralString = 'group_id, key, topic, partition, "offset", value, headers, event_id'
_COPY: LiteralString = 'ON CONFLICT (group_id, topic, partition, "offset", md5(value))'
_SQL: dict[str, LiteralString] = {
    "keys": "SELECT DISTINCT key FROM {} WHERE group_id = %s AND status = 'parked'",
    "exists": "SELECT 1 FROM {} WHERE group_id = %s AND key = %s AND status = 'parked' LIMIT 1",
    "park_behind": "INSERT INTO {} (" + _COLUMNS + ") "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) " + _COPY + " DO NOTHING",
    "park_head": "INSERT INTO {} (" + _COLUMNS + ", error, attempts) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) " + _COPY + " DO UPDATE SET "
    "status = 'parked', error = EXCLUDED.error, attempts = EXCLUDED.attempts, "
    "parked_at = now(), resolved_at = NULL",
    "head": "SELECT * FROM {} WHERE group_id = %s AND key = %s AND status = 'parked' "
    "ORDER BY id LIMIT 1 FOR UPDATE",
    "resolve": "UPDATE {} SET status = %s, resolved_at = now() WHERE id = %s",
    "failed": "UPDATE {} SET error = %s, attempts = attempts + 1 WHERE id = %s",
    "messages": "SELECT * FROM {} WHERE group_id = %s AND key = %s ORDER BY id",
    "summary": "SELECT DISTINCT ON (key) key, count(*) OVER (PARTITION BY key), error, "
    'attempts, topic, partition, "offset", parked_at FROM {} '
    "WHERE group_id = %s AND status = 'parked' ORDER BY key, id",
}
"""The statements on ``<schema>.parked`` (``{}``); a redelivered copy of a message is
recognised by topic, partition, offset and bytes, and not parked twice."""


class ParkedStore:
    """The SQL of one group's parked messages in ``<schema>.parked``; callers own the
    transaction. Several groups may share a schema (each has ``group_id`` rows)."""

    def __init__(self, schema: str, group_id: str) -> None:
        self.group_id = group_id
        self._lock_name = f"tododb.parked.{schema}.{group_id}."
        table = Identifier(schema, "parked")
        self._sql = {name: SQL(template).format(table) for name, template in _SQL.items()}

    async def lock(self, conn: AsyncConn, key: str) -> None:
        """Serialise everything done to one key (the consumer parking, an operator's
        retry) until the transaction ends."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._lock_name + key,))

    async def keys(self, conn: AsyncConn) -> set[str]:
        cur = await conn.execute(self._sql["keys"], (self.group_id,))
        return {str(row[0]) for row in await cur.fetchall()}

    async def is_parked(self, conn: AsyncConn, key: str) -> bool:
        cur = await conn.execute(self._sql["exists"], (self.group_id, key))
        return await cur.fetchone() is not None

    async def park(
        self,
        conn: AsyncConn,
        record: ConsumerRecord[bytes, bytes],
        key: str,
        event_id: str | None,
        failure: tuple[str, int] | None = None,
    ) -> None:
        """Append the message behind ``key``; with ``failure`` (error, attempts) as a head.

        A redelivered copy (same topic, partition, offset and bytes) is not appended
        twice; a head parked again (its key released, the message redelivered and
        failing again) is parked anew with its new error.
        """
        values = (
            self.group_id,
            key,
            record.topic,
            record.partition,
            record.offset,
            record.value,
            encode_headers(record.headers),
            event_id,
        )
        if failure is None:
            await conn.execute(self._sql["park_behind"], values)
        else:
            await conn.execute(self._sql["park_head"], (*values, *failure))

    async def head(self, conn: AsyncConn, key: str) -> ParkedMessage | None:
        """The key's first waiting message, locked for the transaction."""
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(self._sql["head"], (self.group_id, key))
        row = await cur.fetchone()
        return None if row is None else _message(row)

    async def resolve(self, conn: AsyncConn, message_id: int, status: str) -> None:
        await conn.execute(self._sql["resolve"], (status, message_id))

    async def failed(self, conn: AsyncConn, message_id: int, error: str) -> None:
        await conn.execute(self._sql["failed"], (error, message_id))

    async def messages(self, conn: AsyncConn, key: str) -> list[ParkedMessage]:
        """Every row of the key (waiting, handled, skipped), in parking order."""
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(self._sql["messages"], (self.group_id, key))
        return [_message(row) for row in await cur.fetchall()]

    async def summary(self, conn: AsyncConn) -> list[ParkedKey]:
        cur = await conn.execute(self._sql["summary"], (self.group_id,))
        return [ParkedKey(*row) for row in await cur.fetchall()]


class ParkingLot:
    """A consumer's parked keys: the set for the hot path, kept in step with the table."""

    def __init__(self, pool: AsyncConnectionPool[Any], store: ParkedStore) -> None:
        self.pool = pool
        self.store = store
        self.keys: set[str] = set()
        self._loaded_at: float | None = None

    def holds(self, key: str) -> bool:
        return key in self.keys

    def invalidate(self) -> None:
        """The partitions changed: keys parked by another member may now be ours."""
        self._loaded_at = None

    @property
    def stale(self) -> bool:
        return self._loaded_at is None

    def due(self) -> bool:
        return self._loaded_at is None or time.monotonic() - self._loaded_at > REFRESH_SECONDS

    async def reload(self) -> None:
        async with self.pool.connection() as conn:
            self.keys = await self.store.keys(conn)
        self._loaded_at = time.monotonic()

    async def park_head(
        self,
        record: ConsumerRecord[bytes, bytes],
        key: str,
        event_id: str | None,
        error: str,
        attempts: int,
    ) -> None:
        """Park the key behind this failed (already dead-lettered) message."""
        async with self.pool.connection() as conn, conn.transaction():
            await self.store.lock(conn, key)
            await self.store.park(conn, record, key, event_id, (error, attempts))
        self.keys.add(key)

    async def park_behind(
        self, record: ConsumerRecord[bytes, bytes], key: str, event_id: str | None
    ) -> bool:
        """Append the message behind its parked key; False if the key was released
        meanwhile (then the caller handles it: nothing waits ahead of it any more)."""
        async with self.pool.connection() as conn, conn.transaction():
            await self.store.lock(conn, key)
            if await self.store.is_parked(conn, key):
                await self.store.park(conn, record, key, event_id)
                return True
        self.keys.discard(key)
        return False

    async def summary(self) -> list[ParkedKey]:
        async with self.pool.connection() as conn:
            return await self.store.summary(conn)

    async def messages(self, key: str) -> list[ParkedMessage]:
        async with self.pool.connection() as conn:
            return await self.store.messages(conn, key)


def _message(row: dict[str, Any]) -> ParkedMessage:
    return ParkedMessage(
        id=row["id"],
        key=row["key"],
        topic=row["topic"],
        partition=row["partition"],
        offset=row["offset"],
        value=None if row["value"] is None else bytes(row["value"]),
        headers=decode_headers(row["headers"]),
        event_id=row["event_id"],
        error=row["error"],
        attempts=row["attempts"],
        status=row["status"],
        parked_at=row["parked_at"],
    )
