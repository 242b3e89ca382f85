"""Blue/green rebuild: replay the whole log into a new generation, then swap atomically.

Queries keep reading the old generation until the swap. The replay is batched (many
events, one transaction, one tracking record) so a crash mid-rebuild loses nothing: a
rerun of the same generation would resume, and an abandoned one is simply dropped.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Tracking
from psycopg.sql import SQL, Identifier

from tododb.application import TodoApplication
from tododb.eventstore import AppendOnlyApplicationRecorder
from tododb.leadership import AdvisoryLock
from tododb.projections.registry import ReadSide
from tododb.projections.views import APPLICATION_NAME

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (position, head) after every batch."""


class RebuildInProgress(Exception):
    pass


@dataclass(frozen=True)
class RebuildResult:
    id: str
    kind: str
    generation: int
    events: int
    seconds: float
    position: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def rebuild(
    read_side: ReadSide,
    kind: str,
    *,
    progress: Progress | None = None,
    batch_size: int = 5000,
    rebuild_id: str | None = None,
    partitions: int | None = None,
) -> RebuildResult:
    """Replay the log into a new generation of ``kind`` and make it live.

    Big logs are replayed by ``partitions`` processes (default: one per core), each
    folding the todos whose id falls in its partition; the tail written meanwhile is
    then applied in order before the swap.
    """
    read_side.ensure()
    lock = AdvisoryLock(read_side.database_url, f"rebuild:{kind}")
    if not lock.try_acquire():
        raise RebuildInProgress(f"a rebuild of {kind} is already running")
    rebuild_id = rebuild_id or str(uuid.uuid4())
    generation = read_side.next_generation(kind)
    _record(read_side, rebuild_id, kind, generation, "running")
    app = TodoApplication(env={**read_side.env, "POSTGRES_POOL_SIZE": "2"})
    view = read_side.open_view(kind, generation)
    started = time.perf_counter()
    events = 0
    try:
        position = view.max_tracking_id(APPLICATION_NAME) or 0
        head = app.recorder.max_notification_id() or 0
        if partitions is None:
            partitions = min(os.cpu_count() or 1, 4) if head - position >= PARALLEL_FROM else 1
        if partitions > 1 and head > position:
            events += _replay_partitioned(
                read_side,
                kind,
                generation,
                position,
                head,
                partitions,
                batch_size,
                lambda p: progress(p, head) if progress else None,
            )
            position = head
            view.insert_tracking(Tracking(APPLICATION_NAME, position))
            log.info(
                "%s: %d partitions replayed to %d in %.1fs",
                kind,
                partitions,
                position,
                time.perf_counter() - started,
            )
        last_update = 0.0
        # Reading and decoding the next page overlaps with writing this one.
        for batch in _read_ahead(app, position, batch_size):
            position = batch[-1][1]
            view.apply(batch, Tracking(APPLICATION_NAME, position))
            events += len(batch)
            head = max(head, position)
            if progress:
                progress(position, head)
            now = time.perf_counter()
            if now - last_update > 0.5:
                _update(read_side, rebuild_id, position, head, events, now - started)
                last_update = now
        indexing = time.perf_counter()
        view.create_indexes()
        log.info(
            "%s: caught up at %d; indexes built in %.1fs",
            kind,
            position,
            time.perf_counter() - indexing,
        )
        read_side.activate(kind, generation)
        read_side.drop_generations_before(kind, generation - 1)
        seconds = time.perf_counter() - started
        _update(read_side, rebuild_id, position, head, events, seconds, status="completed")
        return RebuildResult(rebuild_id, kind, generation, events, seconds, position)
    except BaseException as e:
        _update(
            read_side,
            rebuild_id,
            0,
            0,
            events,
            time.perf_counter() - started,
            status="failed",
            error=repr(e),
        )
        view.drop()
        raise
    finally:
        view.datastore.close()
        app.close()
        lock.release()


PARALLEL_FROM = 50_000
"""Below this many events one process rebuilds faster than starting several."""


def _replay_partition(
    database_url: str,
    env: dict[str, str],
    schema: str,
    kind: str,
    generation: int,
    after: int,
    until: int,
    batch_size: int,
    partition: int,
    partitions: int,
) -> int:
    """One process's share of a partitioned replay; resumable by its own tracking row."""
    read_side = ReadSide(database_url, env, schema)
    app = TodoApplication(env={**env, "POSTGRES_POOL_SIZE": "1"})
    view = read_side.open_view(kind, generation)
    name = f"{APPLICATION_NAME}#{partition}"
    position = max(view.max_tracking_id(name) or 0, after)
    recorder = app.recorder
    assert isinstance(recorder, AppendOnlyApplicationRecorder)
    count = 0
    try:
        while position < until:
            notifications = recorder.select_partition(
                position, until, partitions, partition, batch_size
            )
            if not notifications:
                break
            position = notifications[-1].id
            view.apply(
                [(app.mapper.to_domain_event(n), n.id) for n in notifications],
                Tracking(name, position),
            )
            count += len(notifications)
        return count
    finally:
        view.datastore.close()
        app.close()


def _replay_partitioned(
    read_side: ReadSide,
    kind: str,
    generation: int,
    after: int,
    until: int,
    partitions: int,
    batch_size: int,
    progress: Callable[[int], None],
) -> int:
    spawn = multiprocessing.get_context("spawn")  # no forking of threads and pools
    with ProcessPoolExecutor(max_workers=partitions, mp_context=spawn) as pool:
        futures = [
            pool.submit(
                _replay_partition,
                read_side.database_url,
                read_side.env,
                read_side.schema,
                kind,
                generation,
                after,
                until,
                batch_size,
                k,
                partitions,
            )
            for k in range(partitions)
        ]
        view = read_side.open_view(kind, generation)
        try:
            while wait(futures, timeout=0.5).not_done:
                progress(
                    min(
                        view.max_tracking_id(f"{APPLICATION_NAME}#{k}") or after
                        for k in range(partitions)
                    )
                )
        finally:
            view.datastore.close()
        return sum(f.result() for f in futures)


def _read_ahead(
    app: TodoApplication, position: int, batch_size: int
) -> Iterator[list[tuple[Any, int]]]:
    """Decoded pages of the log after ``position`` until the head, read by a thread."""
    pages: queue.Queue[list[tuple[Any, int]] | BaseException | None] = queue.Queue(maxsize=3)
    stop = threading.Event()

    def read() -> None:
        start = position
        try:
            while not stop.is_set():
                notifications = app.recorder.select_notifications(start=start + 1, limit=batch_size)
                if notifications:
                    start = notifications[-1].id
                    pages.put([(app.mapper.to_domain_event(n), n.id) for n in notifications])
                if len(notifications) < batch_size and start >= (
                    app.recorder.max_notification_id() or 0
                ):
                    break
            pages.put(None)
        except BaseException as e:
            pages.put(e)

    reader = threading.Thread(target=read, name="rebuild-reader", daemon=True)
    reader.start()
    try:
        while (page := pages.get()) is not None:
            if isinstance(page, BaseException):
                raise page
            yield page
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                pages.get(timeout=0.1)
        reader.join()


def _record(read_side: ReadSide, rebuild_id: str, kind: str, generation: int, status: str) -> None:
    with read_side.connect() as conn:
        conn.execute(
            SQL(
                "INSERT INTO {}.rebuilds (id, name, generation, status) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET generation = EXCLUDED.generation, "
                "status = EXCLUDED.status"
            ).format(Identifier(read_side.schema)),
            (rebuild_id, kind, generation, status),
        )


def _update(
    read_side: ReadSide,
    rebuild_id: str,
    position: int,
    head: int,
    events: int,
    seconds: float,
    *,
    status: str | None = None,
    error: str | None = None,
) -> None:
    with read_side.connect() as conn:
        conn.execute(
            SQL(
                "UPDATE {}.rebuilds SET position = greatest(position, %s), "
                "head = greatest(head, %s), events_per_second = %s, "
                "status = coalesce(%s, status), error = coalesce(%s, error), "
                "finished_at = CASE WHEN %s::text IS NULL THEN NULL ELSE now() END "
                "WHERE id = %s"
            ).format(Identifier(read_side.schema)),
            (
                position,
                head,
                events / seconds if seconds else None,
                status,
                error,
                status,
                rebuild_id,
            ),
        )


def request_rebuild(read_side: ReadSide, kind: str) -> str:
    """Register a rebuild that a background thread will run; returns its id."""
    rebuild_id = str(uuid.uuid4())
    _record(read_side, rebuild_id, kind, read_side.next_generation(kind), "pending")
    return rebuild_id
