"""Read-your-writes: wait until a read model has reached a log position.

One background thread per API process LISTENs for the projections' commit notifications
and refreshes the positions; requests block on a condition variable (no busy polling).
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from tododb.infra.retry import Backoff
from tododb.projections.queries import KINDS, VIEWS_CHANNEL, read_position

log = logging.getLogger(__name__)
RECONNECT_BACKOFF = Backoff(0.2, 5.0)


class PositionWatcher:
    def __init__(self, database_url: str, schema: str) -> None:
        self.database_url = database_url
        self.schema = schema
        self.positions: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="position-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _refresh(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        fresh = {kind: read_position(conn, self.schema, kind) for kind in KINDS}
        with self._changed:
            self.positions = fresh
            self._changed.notify_all()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {VIEWS_CHANNEL}")
                    self._refresh(conn)
                    failures = 0
                    while not self._stop.is_set():
                        # Wake on notifications; the timeout re-reads once a second in case
                        # one was missed across a reconnect.
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            pass
                        self._refresh(conn)
            except psycopg.Error as e:
                log.warning("position watcher lost its connection: %s", e)
                failures += 1
                self._stop.wait(RECONNECT_BACKOFF.delay(failures))

    def wait_for(self, kind: str, position: int, timeout: float) -> bool:
        """True once ``kind`` has applied ``position``; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.positions.get(kind, 0) < position:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True
