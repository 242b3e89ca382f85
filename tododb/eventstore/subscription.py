"""The library's LISTEN/NOTIFY subscription without its lost wake-up.

``PostgresSubscription`` starts its first read and its LISTEN in two threads at once. An
event committed after that first read but before LISTEN runs sends its NOTIFY to nobody,
and the subscriber then sits behind it until some later event wakes it: on a quiet log,
for good. Here the listening thread wakes the reader once LISTEN is in place (so one read
follows it and catches anything committed before), and again every ``POLL_SECONDS`` as a
bound on any other missed notification.
"""

from __future__ import annotations

import time

from eventsourcing.postgres import PostgresSubscription
from psycopg.sql import SQL, Identifier

POLL_SECONDS = 5.0
"""A read every few seconds at most, even with no notification: a backstop, not the path."""


class WakingSubscription(PostgresSubscription):
    """``PostgresSubscription`` whose reader is woken after LISTEN and now and then."""

    def _listen(self) -> None:
        try:
            with self._recorder.datastore.get_connection() as conn:
                conn.execute(SQL("LISTEN {0}").format(Identifier(self._recorder.channel_name)))
                self._has_been_notified.set()  # a read after LISTEN: nothing falls between
                polled = time.monotonic()
                while not self._has_been_stopped and not self._thread_error:
                    for _ in conn.notifies(timeout=0.1, stop_after=1):
                        self._has_been_notified.set()
                    if time.monotonic() - polled >= POLL_SECONDS:
                        self._has_been_notified.set()
                        polled = time.monotonic()
        except BaseException as e:
            if self._thread_error is None:
                self._thread_error = e
            self.stop()
