"""One active worker per job across processes: a PostgreSQL session advisory lock.

The lock lives as long as the holder's connection, so a worker that dies (crash, kill -9,
lost network) releases it without anyone cleaning up, and a standby takes over.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

import psycopg

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for a lock name (what pg_advisory_lock takes)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLock:
    """``acquire()`` blocks as a standby until this process holds the named lock."""

    def __init__(self, database_url: str, name: str) -> None:
        self.database_url = database_url
        self.name = name
        self.key = lock_key(f"tododb:{name}")
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def try_acquire(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.database_url,
                autocommit=True,
                connect_timeout=5,
                application_name=holder_name(self.name),
            )
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        held = bool(row and row[0])
        if not held:
            self._close()
        return held

    def acquire(self, stop: threading.Event, poll_seconds: float = 1.0) -> bool:
        """True once held; False if ``stop`` was set while standing by."""
        announced = False
        while not stop.is_set():
            try:
                if self.try_acquire():
                    log.info("%s: this process is now the active worker", self.name)
                    return True
            except psycopg.OperationalError as e:
                log.warning("%s: cannot reach the database for the lock: %s", self.name, e)
            if not announced:
                log.info("%s: another process is active; standing by", self.name)
                announced = True
            stop.wait(poll_seconds)
        return False

    def is_held(self) -> bool:
        """False when the lock's connection is gone (then another process may hold it)."""
        if self._conn is None or self._conn.closed:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._close()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


HOLDER_PREFIX = "tododb "


def holder_name(lock: str) -> str:
    """The lock connection's ``application_name``: which process holds which lock,
    visible in ``pg_stat_activity`` (``tododb relay host:pid``; at most 63 bytes)."""
    return f"{HOLDER_PREFIX}{lock} {socket.gethostname()}:{os.getpid()}"[:63]


@dataclass(frozen=True)
class Holder:
    """The session holding a lock, as PostgreSQL sees it."""

    process: str
    """``host:pid`` of the holding process (from its ``application_name``), else the
    client address and backend pid."""
    since: str | None
    """When its connection began (ISO 8601)."""

    def pid(self) -> int | None:
        tail = self.process.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else None


_HOLDER_QUERY = (
    "SELECT a.application_name AS app, host(a.client_addr) AS addr, l.pid AS pid, "
    "a.backend_start AS since FROM pg_locks l "
    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE "
)
_LOCK_FILTER = (
    "l.locktype = 'advisory' AND l.granted "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.objsubid = 1"
)


def _key_parts(name: str) -> tuple[int, int]:
    key = lock_key(f"tododb:{name}") & 0xFFFFFFFFFFFFFFFF
    return key >> 32, key & 0xFFFFFFFF


def lock_holders(conn: psycopg.Connection[Any], name: str) -> int:
    """How many sessions hold the named lock (0 or 1): lets status pages say 'running'."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks l WHERE " + _LOCK_FILTER,  # noqa: S608 - a constant
        _key_parts(name),
    ).fetchone()
    if row is None:
        return 0
    value = row["count"] if isinstance(row, dict) else row[0]
    return int(value)


def lock_holder(conn: psycopg.Connection[Any], name: str) -> Holder | None:
    """The session holding the named lock (pg_locks joined with pg_stat_activity)."""
    row = conn.execute(
        _HOLDER_QUERY + _LOCK_FILTER + " LIMIT 1",
        _key_parts(name),
    ).fetchone()
    if row is None:
        return None
    names = ("app", "addr", "pid", "since")
    values = row if isinstance(row, dict) else dict(zip(names, row, strict=True))
    app = values["app"] or ""
    if app.startswith(HOLDER_PREFIX):
        process = app.rsplit(" ", 1)[-1]
    else:
        process = f"{values['addr'] or 'local'} backend {values['pid']}"
    since = values["since"].isoformat() if values["since"] is not None else None
    return Holder(process=process, since=since)
