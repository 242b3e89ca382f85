"""The SQL of group commit: one batch of commands, one transaction, one append lock.

Every batch takes the events table's append lock before its first notification id is
drawn and holds it through COMMIT, so ids commit in the order they were drawn and a
reader tailing the log never passes a gap that fills in later (the library's reason for
its table lock). A batch takes it once for all its commands.

The append lock is a transaction-scoped advisory lock named after the table
(``append_lock``), not the library's ``LOCK TABLE ... IN EXCLUSIVE MODE``: that mode
conflicts with the SHARE UPDATE EXCLUSIVE lock autovacuum takes, so every autovacuum of
the events table stopped all appends until PostgreSQL cancelled it at
``deadlock_timeout`` (1 s): requests stalled for a second, and the table was never
vacuumed (an anti-wraparound vacuum is not cancelled: appends would wait all through
it). The recorder gives the library's own path (appends with a tracking record) the same
lock, so every writer of the table still takes turns; readers take no lock either way.

Three server functions, created with the table, do the work in one statement each:
``<table>_append`` (lock, NOTIFY, INSERT ... RETURNING), ``<table>_append_each`` (the
same, leaving out the commands that lost a race) and ``<table>_lock_taken`` (lock, then
which of the given keys are already stored).

- **Optimistic first.** The whole batch is one ``SELECT * FROM <table>_append(...)`` on
  the pool's autocommit connection: one statement, its own transaction, one round trip.
  With one command that is all there is: a conflict is the primary key's violation,
  raised as the library raises it.
- **A lost race costs one statement more.** If the primary key refuses a batch of
  several, ``<table>_append_each`` writes it again: under the lock, it leaves out whole
  any command whose key is already stored (most often a process whose cached copy of
  the todo was behind) and inserts the rest. The loser gets ``IntegrityError`` (a
  ``RecordConflictError``); the others are stored as if it had never come. (Checking
  every key this way on the first try cost the event store alone ~10% of its appends.)
- **Checked when two commands of a batch share a key** (or the primary key refuses the
  batch all the same): ``BEGIN``, ``<table>_lock_taken`` for all keys, decide in Python
  (``batches.decide``: as if inserted one by one in queue order), append the winners in
  one statement, ``COMMIT``; the losers get ``IntegrityError``.
- **Isolated when data is bad.** A failure that is no conflict (a version out of range,
  text the database refuses): the batch is written again in one transaction with each
  command in a savepoint of its own, so the culprit alone fails.
- **A connection failure fails the whole batch**; the caller retries it, as the library
  retries its own inserts, and a retry that meets its own committed rows is a conflict
  the application recognises as its own success.
- **Unprepared statements.** psycopg marks a statement prepared once it has queued its
  Parse; after an error earlier in a pipeline the server skips that Parse, and the next
  use fails with "prepared statement _pg3_N does not exist". Conflicts in a pipeline are
  expected here, so these statements are never prepared.
"""

from __future__ import annotations

import contextlib
import selectors
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psycopg
from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
)
from psycopg import Connection, Pipeline
from psycopg.errors import UniqueViolation
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow, tuple_row
from psycopg.sql import SQL, Composed, Identifier, Literal

from tododb.eventstore import arrays
from tododb.eventstore.arrays import BigintArray, ByteaArray, TextArray, UuidArray
from tododb.eventstore.batches import Key, all_keys, decide, positions_by_key
from tododb.eventstore.committer import Append

T = TypeVar("T")
Outcome = list[int] | BaseException
"""A command's notification ids, or its own error."""

SEND_TIMEOUT = 60.0
"""Seconds without room in the socket to send more of a batch: the server stopped reading."""

_TRANSLATIONS: tuple[tuple[type[psycopg.Error], type[PersistenceError]], ...] = (
    (psycopg.InterfaceError, InterfaceError),
    (psycopg.OperationalError, OperationalError),
    (psycopg.DataError, DataError),
    (psycopg.IntegrityError, IntegrityError),
    (psycopg.InternalError, InternalError),
    (psycopg.ProgrammingError, ProgrammingError),
    (psycopg.NotSupportedError, NotSupportedError),
    (psycopg.DatabaseError, DatabaseError),
    (psycopg.Error, PersistenceError),
)
"""psycopg's errors as the library's datastore reports them (``get_connection``)."""

_APPEND_LOCK = "tododb.eventstore.append"
"""The append lock's first key: its own name space among the two-key advisory locks."""
_LOCK = "SET LOCAL lock_timeout = {timeout}; PERFORM {lock};"
_APPEND = (
    "CREATE OR REPLACE FUNCTION {schema}.{function}"
    "(ids uuid[], versions bigint[], topics text[], states bytea[]) "
    "RETURNS TABLE (stored_id uuid, stored_version bigint, stored_position bigint) "
    "LANGUAGE plpgsql AS $$ BEGIN {lock} NOTIFY {channel}; "
    "RETURN QUERY INSERT INTO {schema}.{table} AS e "
    "(originator_id, originator_version, topic, state) "
    "SELECT * FROM unnest(ids, versions, topics, states) "
    "RETURNING e.originator_id, e.originator_version, e.notification_id; END $$"
)
_APPEND_EACH = (
    "CREATE OR REPLACE FUNCTION {schema}.{function}"
    "(ids uuid[], versions bigint[], topics text[], states bytea[], commands bigint[]) "
    "RETURNS TABLE (stored_id uuid, stored_version bigint, stored_position bigint) "
    "LANGUAGE plpgsql AS $$ BEGIN {lock} NOTIFY {channel}; "
    "RETURN QUERY WITH r AS (SELECT * FROM unnest(ids, versions, topics, states, commands) "
    "WITH ORDINALITY AS r(id, version, topic, state, command, n)), "
    "lost AS (SELECT r.command FROM r JOIN {schema}.{table} AS e "
    "ON e.originator_id = r.id AND e.originator_version = r.version) "
    "INSERT INTO {schema}.{table} AS e (originator_id, originator_version, topic, state) "
    "SELECT r.id, r.version, r.topic, r.state FROM r "
    "WHERE r.command NOT IN (SELECT command FROM lost) ORDER BY r.n "
    "RETURNING e.originator_id, e.originator_version, e.notification_id; END $$"
)
"""The append of a batch whose commands may have lost races: under the append lock (no
other writer inserts meanwhile), a command any of whose keys is already stored is left
out whole, and the others are inserted, in order, in the same statement."""
_LOCK_TAKEN = (
    "CREATE OR REPLACE FUNCTION {schema}.{function}(ids uuid[], versions bigint[]) "
    "RETURNS TABLE (stored_id uuid, stored_version bigint) "
    "LANGUAGE plpgsql AS $$ BEGIN {lock} RETURN QUERY SELECT k.id, k.version "
    "FROM unnest(ids, versions) AS k(id, version) JOIN {schema}.{table} AS e "
    "ON e.originator_id = k.id AND e.originator_version = k.version; END $$"
)


class BatchWriter:
    """Writes a batch of appends on one connection and answers each of them."""

    def __init__(self, schema: str, table: str, channel: str, lock_timeout: int) -> None:
        names = {
            "schema": Identifier(schema),
            "table": Identifier(table),
            "channel": Identifier(channel),
            "timeout": Literal(f"{lock_timeout}s"),
        }
        append, lock_taken = Identifier(f"{table}_append"), Identifier(f"{table}_lock_taken")
        append_each = Identifier(f"{table}_append_each")
        lock = SQL(_LOCK).format(timeout=names["timeout"], lock=append_lock(schema, table))
        self.statements: list[Composed] = [
            SQL(_APPEND).format(function=append, lock=lock, **names),
            SQL(_APPEND_EACH).format(function=append_each, lock=lock, **names),
            SQL(_LOCK_TAKEN).format(function=lock_taken, lock=lock, **names),
        ]
        """DDL of the two functions, run with the table's (``create_table``)."""
        # Rendered once: composing SQL on every call costs about as much as a round trip.
        # The arrays go in binary (%b), packed by ``arrays`` rather than dumped by psycopg.
        call = "SELECT * FROM {}.{}(%b::uuid[], %b::bigint[]"
        self.append_sql = (
            SQL(call + ", %b::text[], %b::bytea[])").format(names["schema"], append).as_bytes()
        )
        self.lock_taken_sql = SQL(call + ")").format(names["schema"], lock_taken).as_bytes()
        self.append_each_sql = (
            SQL(call + ", %b::text[], %b::bytea[], %b::bigint[])")
            .format(names["schema"], append_each)
            .as_bytes()
        )

    def write(self, conn: Connection[Any], batch: list[Append]) -> None:
        """Store ``batch``; answer each command once its outcome is committed.

        Raises only what fails the batch as a whole (a connection lost, a lock timeout,
        or the one command's own error): the committer gives it to each of its commands.
        """
        if len(batch) == 1:
            batch[0].succeed(self._store_now(conn, batch)[0])
            return
        for item, outcome in zip(batch, self._write_many(conn, batch), strict=True):
            if isinstance(outcome, BaseException):
                item.fail(outcome)
            else:
                item.succeed(outcome)

    def _write_many(self, conn: Connection[Any], batch: list[Append]) -> list[Outcome]:
        """The cheapest write that holds the batch: all of it in one statement; else
        without the commands that lost a race (one statement more); else, when two of
        its commands share a key, the winners decided under the lock. Data the database
        refuses: each command in a savepoint of its own."""
        if _shares_keys(batch):
            writes = [self._write_checked]
        else:
            writes = [self._store_all, self._store_each, self._write_checked]
        for write in writes:
            try:
                return write(conn, batch)
            except UniqueViolation:
                continue
            except Exception as e:
                if is_connection_error(e):
                    raise
                break
        return self._write_isolated(conn, batch)

    def _store_all(self, conn: Connection[Any], batch: list[Append]) -> list[Outcome]:
        return [*self._store_now(conn, batch)]

    def _store_now(self, conn: Connection[Any], batch: list[Append]) -> list[list[int]]:
        """All of ``batch`` in one statement, which is its own transaction: the append
        (lock, NOTIFY, INSERT) run on the autocommit connection, committed by the server
        before it answers. One round trip, and no BEGIN, COMMIT or pipeline to drive
        (they cost the client more than twice the CPU of the statement itself)."""
        positions = _appended(conn, self.append_sql, _columns(all_keys(batch), _events(batch)))
        return [[positions[key] for key in item.keys] for item in batch]

    def _store_each(self, conn: Connection[Any], batch: list[Append]) -> list[Outcome]:
        """``_store_now`` for several commands, where one that lost a race (a todo's
        version already stored, most often by a process whose copy was current) is
        answered with its own conflict and the others are stored all the same: one
        statement, one round trip, whoever lost."""
        commands = arrays.bigints([n for n, item in enumerate(batch) for _ in item.keys])
        columns = (*_columns(all_keys(batch), _events(batch)), commands)
        positions = _appended(conn, self.append_each_sql, columns)
        return [_stored_or_lost(item, positions) for item in batch]

    def _write_checked(self, conn: Connection[Any], batch: list[Append]) -> list[Outcome]:
        """Lock and find the keys already taken, decide, append the winners, commit: two
        round trips in a pipeline, however many commands."""

        def steps(pipeline: Pipeline) -> list[TupleRow]:
            with conn.cursor() as cur, conn.cursor(row_factory=tuple_row) as sel:
                cur.execute(b"BEGIN", prepare=False)
                sel.execute(self.lock_taken_sql, _key_columns(all_keys(batch)), prepare=False)
                _sync(conn, pipeline)
                wins.extend(decide((item.keys for item in batch), set(sel.fetchall())))
                winners = [item for item, won in zip(batch, wins, strict=True) if won]
                return self._append_and_commit(conn, pipeline, winners)

        wins: list[bool] = []
        positions = positions_by_key(_pipelined(conn, steps))
        return [
            [positions[key] for key in item.keys] if won else conflict(item)
            for item, won in zip(batch, wins, strict=True)
        ]

    def _append_and_commit(
        self, conn: Connection[Any], pipeline: Pipeline, winners: list[Append]
    ) -> list[TupleRow]:
        with conn.cursor() as cur, conn.cursor(row_factory=tuple_row) as ins:
            if winners:
                ins.execute(
                    self.append_sql, _columns(all_keys(winners), _events(winners)), prepare=False
                )
            cur.execute(b"COMMIT", prepare=False)
            _sync(conn, pipeline)
            return ins.fetchall() if winners else []

    def _write_isolated(self, conn: Connection[Any], batch: list[Append]) -> list[Outcome]:
        """The batch again after a failure that was no conflict: one transaction, one
        lock, each command checked and appended in a savepoint of its own."""
        claimed: set[Key] = set()
        with conn.transaction():
            return [self._store_alone(conn, item, claimed) for item in batch]

    def _store_alone(self, conn: Connection[Any], item: Append, claimed: set[Key]) -> Outcome:
        """Check and append one command in a savepoint; its error undoes only itself."""
        try:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                cur.execute(self.lock_taken_sql, _key_columns(item.keys), prepare=False)
                if not decide([item.keys], claimed | set(cur.fetchall()))[0]:
                    return conflict(item)
                cur.execute(self.append_sql, _columns(item.keys, item.events), prepare=False)
                positions = positions_by_key(cur.fetchall())
        except Exception as e:
            if is_connection_error(e):
                raise
            return translated(e)
        claimed.update(item.keys)
        return [positions[key] for key in item.keys]


def append_lock(schema: str, table: str) -> Composed:
    """The expression that takes ``schema.table``'s append lock until the transaction
    ends: an advisory lock, which VACUUM and ANALYZE do not take (see above). Two keys,
    so that no one-key advisory lock elsewhere (leadership, DDL) can share it."""
    return SQL("pg_advisory_xact_lock(hashtext({}), hashtext({}))").format(
        Literal(_APPEND_LOCK), Literal(f"{schema}.{table}")
    )


def _appended(conn: Connection[Any], statement: bytes, params: tuple[Any, ...]) -> dict[Key, int]:
    """Run one append function on the autocommit connection (the statement is its own
    transaction); the positions of the rows it stored, by key."""
    if not conn.autocommit:
        raise ProgrammingError("the batch writer needs an autocommit connection")
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(statement, params)
        return positions_by_key(cur.fetchall())


def _stored_or_lost(item: Append, positions: dict[Key, int]) -> Outcome:
    """A command's positions, or its conflict if the append left it out (never half)."""
    stored = [positions.get(key) for key in item.keys]
    if all(p is None for p in stored):
        return conflict(item)
    if any(p is None for p in stored):
        return InternalError("the append stored part of a command")  # never expected
    return [p for p in stored if p is not None]


def conflict(item: Append) -> IntegrityError:
    """The error of a command that another one beat to one of its keys: what the primary
    key would raise, so the application's optimistic concurrency works unchanged."""
    todo_id, version = item.keys[0]
    return IntegrityError(
        "another command holds a version this command would write "
        f"(its first event: todo {todo_id}, version {version})"
    )


def is_connection_error(error: BaseException) -> bool:
    """Errors of the connection, not of one command: the whole batch fails and is retried."""
    return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)


def translated(error: Exception) -> Exception:
    """A command's own psycopg error, as the library's datastore would report it."""
    for source, target in _TRANSLATIONS:
        if isinstance(error, source):
            reported = target(str(error))
            reported.__cause__ = error
            return reported
    return error


def _shares_keys(batch: list[Append]) -> bool:
    keys = all_keys(batch)
    return len(set(keys)) != len(keys)


def _pipelined(conn: Connection[Any], steps: Callable[[Pipeline], T]) -> T:
    """Run ``steps`` in pipeline mode. On an error: fetch what is left of the pipeline,
    close it, roll back the transaction, then raise the error (closing a pipeline with
    results pending would raise one of its own instead)."""
    error: Exception | None = None
    with conn.pipeline() as pipeline:
        try:
            return_value = steps(pipeline)
        except Exception as e:
            error = e
            with contextlib.suppress(psycopg.Error):
                _sync(conn, pipeline)
    if error is not None:
        _rollback(conn)
        raise error
    return return_value


def _rollback(conn: Connection[Any]) -> None:
    status = conn.info.transaction_status
    if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error):
            conn.execute(b"ROLLBACK", prepare=False)


def _sync(conn: Connection[Any], pipeline: Pipeline) -> None:
    """``pipeline.sync()``, after sending everything libpq still holds (see below)."""
    send_pending(conn)
    pipeline.sync()


def send_pending(conn: Connection[Any]) -> None:
    """Push what libpq still holds onto the socket, waiting for room as needed.

    This avoids the hang with very large pipelined batches. psycopg's pipeline
    (``generators.pipeline_communicate``, C and Python alike) flushes once per writable
    wake-up and returns as soon as its command queue is empty, even when that last flush
    could not send everything (``PQflush`` returned 1: the socket buffer was full). With
    a message larger than the socket buffers (an INSERT of ~20,000+ events, several MB),
    part of it stays in libpq's buffer, ``sync()`` waits for results, and the server waits
    in ClientRead for the rest of the message: both wait forever. Sent in full first, the
    Sync that follows is a few bytes, which one writable wake-up always takes.
    """
    pgconn = conn.pgconn
    if not pgconn.flush():
        return
    with selectors.DefaultSelector() as selector:
        selector.register(pgconn.socket, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while pgconn.flush():
            events = selector.select(SEND_TIMEOUT)
            if not events:
                conn.close()  # half a message sent: the connection cannot be used again
                raise psycopg.OperationalError("timed out sending a batch to the server")
            if any(mask & selectors.EVENT_READ for _, mask in events):
                pgconn.consume_input()  # the server may answer meanwhile: keep reading


def _columns(
    keys: list[Key], events: Iterable[Any]
) -> tuple[UuidArray, BigintArray, TextArray, ByteaArray]:
    """The append's parameters: one array per column (``arrays``: packed, not dumped)."""
    topics, states = [], []
    for event in events:
        topics.append(event.topic)
        states.append(event.state)
    ids, versions = _key_columns(keys)
    return ids, versions, arrays.texts(topics), arrays.byteas(states)


def _events(batch: list[Append]) -> list[Any]:
    return [event for item in batch for event in item.events]


def _key_columns(keys: list[Key]) -> tuple[UuidArray, BigintArray]:
    return (
        arrays.uuids([todo_id for todo_id, _ in keys]),
        arrays.bigints([version for _, version in keys]),
    )
