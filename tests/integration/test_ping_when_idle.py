"""Pooled connections are pinged only after sitting idle (half a command's round trips)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tododb.infra.postgres import PingWhenIdle, ping_when_idle


def test_a_connection_lent_again_at_once_is_not_pinged_but_an_idle_one_is(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[object] = []
    real = ConnectionPool.check_connection

    def counted(conn: psycopg.Connection[Any]) -> None:
        pings.append(conn)
        real(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counted))
    check = PingWhenIdle(idle_seconds=3600.0)
    with ConnectionPool(database_url, min_size=1, max_size=1, check=check) as pool:
        for _ in range(5):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        # Only this pool's one connection counts: the patch sees every pool of the process,
        # and the session's other pools (a projection worker's thread) may ping meanwhile.
        assert [c for c in pings if c is conn] == [conn]  # the first lending only
        check.idle_seconds = 0.0
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        assert [c for c in pings if c is conn] == [conn, conn]


def test_the_pool_still_keeps_its_check_where_we_install_ours(database_url: str) -> None:
    """``ping_when_idle`` sets psycopg_pool's private ``_check``: fail loudly if renamed."""
    pool: ConnectionPool[Any] = ConnectionPool(database_url, min_size=1, open=False)
    ping_when_idle(pool)
    assert isinstance(pool._check, PingWhenIdle)
