"""The library's infrastructure factory, with the bounds the library leaves open.

A database that cannot be reached is reported after one pool wait
(``POSTGRES_CONNECT_TIMEOUT``) instead of ten retried ones, and a pool whose connections
died reconnects on demand instead of after a backoff that grows with the outage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from eventsourcing.persistence import PersistenceError
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
)
from eventsourcing.utils import Environment
from psycopg import Connection
from psycopg.rows import DictRow
from psycopg_pool import PoolTimeout

from tododb.eventstore.recorder import AppendOnlyApplicationRecorder
from tododb.infra.postgres import RECONNECT_SECONDS, DatabaseUnavailable, ping_when_idle


class BoundedDatastore(PostgresDatastore):
    """The library's datastore, with a pool timeout reported as ``DatabaseUnavailable``."""

    @contextmanager
    def get_connection(self) -> Iterator[Connection[DictRow]]:
        try:
            with super().get_connection() as conn:
                yield conn
        except PersistenceError as e:
            if isinstance(e.__cause__, PoolTimeout):
                raise DatabaseUnavailable(str(e)) from e
            raise


class TodoPostgresFactory(PostgresFactory):
    """``PERSISTENCE_MODULE=tododb.eventstore:TodoPostgresFactory``: every recorder of
    tododb (the event store, the read models, the relay's tracking) gets bounded waits."""

    application_recorder_class: type[PostgresApplicationRecorder]

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        # The library builds its own datastore; the subclass only narrows how a pool
        # timeout is reported (no state of its own), so re-typing the instance is safe.
        self.datastore.__class__ = BoundedDatastore
        self.datastore.pool.reconnect_timeout = RECONNECT_SECONDS
        ping_when_idle(self.datastore.pool)


TodoPostgresFactory.application_recorder_class = AppendOnlyApplicationRecorder
