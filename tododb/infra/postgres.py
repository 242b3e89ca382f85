"""PostgreSQL connection settings: a libpq URL as the ``eventsourcing`` library's env."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from eventsourcing.persistence import PersistenceError
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow

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
