"""PostgreSQL connection settings: a libpq URL as the ``eventsourcing`` library's env."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from eventsourcing.persistence import PersistenceError
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow
from psycopg_pool import ConnectionPool

RECONNECT_SECONDS = 1.0
"""How long a pool's background task keeps retrying one dead connection. After that the
slot is given up and the next request connects at once (psycopg_pool grows the pool for
waiting clients), so service resumes as soon as the database answers again, however long
the outage was; psycopg_pool's own backoff, uncapped, doubles up to minutes."""


class DatabaseUnavailable(PersistenceError):
    """No connection could be had within the pool timeout: the database is unreachable.

    Deliberately not the library's ``OperationalError``, which its recorders retry ten
    times; one wait of ``POSTGRES_CONNECT_TIMEOUT`` is the whole budget of a request.
    """


IDLE_BEFORE_PING = 1.0
"""A pooled connection used within this many seconds is lent without a ping."""


class PingWhenIdle:
    """A pool ``check`` that pings only connections idle for ``IDLE_BEFORE_PING``.

    Pinging on every checkout (the library's ``pre_ping``) was half of a command's round
    trips: a load and an append each paid one. A connection used a moment ago is as good
    as a ping; if the server went away since, the statement fails as a ping would have,
    the pool drops the broken connection, and the caller's retry (or 503) follows.
    """

    def __init__(self, idle_seconds: float = IDLE_BEFORE_PING) -> None:
        self.idle_seconds = idle_seconds
        self._lent: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self, conn: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        last = self._lent.get(conn)
        if last is None or now - last > self.idle_seconds:
            ConnectionPool.check_connection(conn)
        self._lent[conn] = now


def ping_when_idle(pool: ConnectionPool[Any]) -> None:
    """Install ``PingWhenIdle`` on a pool built by someone else (the library builds its
    own, with a ping on every checkout or none). psycopg_pool keeps the check in
    ``_check``; a unit test fails loudly if an upgrade renames it."""
    if not hasattr(pool, "_check"):
        raise RuntimeError("psycopg_pool no longer keeps its check in _check")
    pool._check = PingWhenIdle()


def eventsourcing_env(
    database_url: str,
    *,
    schema: str = "public",
    pool_size: int = 10,
    max_overflow: int = 10,
    connect_timeout: int = 5,
) -> dict[str, str]:
    """Translate a libpq URL into the ``eventsourcing`` library's POSTGRES_* settings."""
    params: dict[str, Any] = conninfo_to_dict(database_url)
    return {
        "PERSISTENCE_MODULE": "tododb.eventstore:TodoPostgresFactory",
        "POSTGRES_DBNAME": str(params.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(params.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(params.get("port") or "5432"),
        "POSTGRES_USER": str(params.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(params.get("password") or ""),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(max_overflow),
        "POSTGRES_CONNECT_TIMEOUT": str(connect_timeout),
        "POSTGRES_PRE_PING": "y",
    }


def with_database(database_url: str, dbname: str) -> str:
    """The same server, another database (tests make one per run)."""
    params = {k: str(v) for k, v in conninfo_to_dict(database_url).items() if v is not None}
    params["dbname"] = dbname
    return make_conninfo("", **params)


ConnectionFactory = Callable[[], AbstractContextManager[psycopg.Connection[DictRow]]]
"""Lends an autocommit connection whose rows are dicts (a pool's ``connection``)."""
