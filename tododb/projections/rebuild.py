"""Blue/green rebuild: replay the whole log into a new generation, then swap atomically.

Queries keep reading the old generation until the swap. The replay is batched (many
events, one transaction, one tracking record) so a crash mid-rebuild loses nothing: a
rerun of the same generation would resume, and an abandoned one is simply dropped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from eventsourcing.persistence import Tracking
from psycopg.sql import SQL, Identifier

from tododb.application import TodoApplication
from tododb.leadership import AdvisoryLock
from tododb.projections.registry import ReadSide
from tododb.projections.views import APPLICATION_NAME

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
    batch_size: int = 2000,
    rebuild_id: str | None = None,
) -> RebuildResult:
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
        while True:
            notifications = app.recorder.select_notifications(start=position + 1, limit=batch_size)
            if notifications:
                batch = [(app.mapper.to_domain_event(n), n.id) for n in notifications]
                position = notifications[-1].id
                view.apply(batch, Tracking(APPLICATION_NAME, position))
                events += len(batch)
                head = max(head, position)
                if progress:
                    progress(position, head)
                _update(
                    read_side, rebuild_id, position, head, events, time.perf_counter() - started
                )
            if len(notifications) < batch_size:
                head = app.recorder.max_notification_id() or 0
                if position >= head:
                    break
        view.create_indexes()
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
