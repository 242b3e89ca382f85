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

from tododb.application import TodoApplication
from tododb.eventstore import AppendOnlyApplicationRecorder
from tododb.infra.leadership import AdvisoryLock
from tododb.projections.quarantine import decode
from tododb.projections.rebuild_log import RebuildLog
from tododb.projections.registry import ReadSide
from tododb.projections.views import APPLICATION_NAME, TodoRowsView

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (position, head) after every batch."""

Page = list[tuple[Any, int]]
"""Decoded events with their log positions, in log order."""

PARALLEL_FROM = 50_000
"""Below this many events one process rebuilds faster than starting several."""

PROGRESS_EVERY = 0.5
"""Seconds between progress rows written to the rebuild log while catching up."""


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
    return Rebuild(
        read_side,
        kind,
        progress=progress,
        batch_size=batch_size,
        rebuild_id=rebuild_id,
        partitions=partitions,
    ).run()


def request_rebuild(read_side: ReadSide, kind: str) -> str:
    """Register a rebuild that a background thread will run; returns its id."""
    rebuild_id = str(uuid.uuid4())
    RebuildLog(read_side).request(rebuild_id, kind, read_side.next_generation(kind))
    return rebuild_id


def default_partitions(backlog: int) -> int:
    """One process per core (at most 4) when the backlog is big enough to repay starting them."""
    return min(os.cpu_count() or 1, 4) if backlog >= PARALLEL_FROM else 1


class Rebuild:
    """One rebuild of one read model; ``run`` reads as its steps, in order."""

    def __init__(
        self,
        read_side: ReadSide,
        kind: str,
        *,
        progress: Progress | None = None,
        batch_size: int = 5000,
        rebuild_id: str | None = None,
        partitions: int | None = None,
    ) -> None:
        self.read_side = read_side
        self.kind = kind
        self.on_progress = progress
        self.batch_size = batch_size
        self.partitions = partitions
        self.id = rebuild_id or str(uuid.uuid4())
        self.rebuilds = RebuildLog(read_side)
        self.events = 0
        self.position = 0
        self.head = 0
        self.started = time.perf_counter()
        self.recorded_at = 0.0

    def run(self) -> RebuildResult:
        """Rebuild under the kind's lock; RebuildInProgress if another rebuild holds it."""
        self.read_side.ensure()
        lock = AdvisoryLock(self.read_side.database_url, f"rebuild:{self.kind}")
        if not lock.try_acquire():
            raise RebuildInProgress(f"a rebuild of {self.kind} is already running")
        try:
            return self.replay(self.register())
        finally:
            lock.release()

    def register(self) -> int:
        """Claim the next generation and record this rebuild as running in it."""
        generation = self.read_side.next_generation(self.kind)
        self.rebuilds.start(self.id, self.kind, generation)
        return generation

    def replay(self, generation: int) -> RebuildResult:
        """Fill ``generation`` and swap it in; on failure record why and drop its tables."""
        app = self.read_side.application(pool_size=2)
        view = self.read_side.open_view(self.kind, generation)
        self.started = time.perf_counter()
        try:
            self.replay_partitioned(app, view, generation)
            self.catch_up(app, view)
            return self.swap(view, generation)
        except BaseException as e:
            self.fail(view, e)
            raise
        finally:
            view.datastore.close()
            app.close()

    def replay_partitioned(self, app: TodoApplication, view: TodoRowsView, generation: int) -> None:
        """The log up to its current head, split by todo id over processes, if it pays."""
        self.position = view.max_tracking_id(APPLICATION_NAME) or 0
        self.head = _head(app)
        partitions = self.partitions
        if partitions is None:
            partitions = default_partitions(self.head - self.position)
        if partitions <= 1 or self.head <= self.position:
            return
        jobs = [self.partition_job(generation, k, partitions) for k in range(partitions)]
        self.events += self.run_partitions(jobs, view)
        self.position = self.head
        view.insert_tracking(Tracking(APPLICATION_NAME, self.position))
        log.info(
            "%s: %d partitions replayed to %d in %.1fs",
            self.kind,
            partitions,
            self.position,
            self.elapsed(),
        )

    def partition_job(self, generation: int, partition: int, partitions: int) -> PartitionJob:
        return PartitionJob(
            database_url=self.read_side.database_url,
            env=self.read_side.env,
            schema=self.read_side.schema,
            kind=self.kind,
            generation=generation,
            after=self.position,
            until=self.head,
            batch_size=self.batch_size,
            partition=partition,
            partitions=partitions,
        )

    def run_partitions(self, jobs: list[PartitionJob], view: TodoRowsView) -> int:
        """Run ``jobs`` in spawned processes, reporting the slowest one's position meanwhile."""
        spawn = multiprocessing.get_context("spawn")  # no forking of threads and pools
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=spawn) as pool:
            futures = [pool.submit(_replay_partition, job) for job in jobs]
            while wait(futures, timeout=0.5).not_done:
                if self.on_progress:
                    slowest = min(view.max_tracking_id(j.tracking_name) or j.after for j in jobs)
                    self.on_progress(slowest, self.head)
            return sum(f.result() for f in futures)

    def catch_up(self, app: TodoApplication, view: TodoRowsView) -> None:
        """The rest of the log in order, to its head, reading the next page while applying one.

        The partitions may have quarantined todos: the view learns them before going on.
        """
        view.load_quarantine()
        for page in _read_ahead(app, self.position, self.batch_size):
            self.position = page[-1][1]
            view.apply(page, Tracking(APPLICATION_NAME, self.position))
            self.events += len(page)
            self.head = max(self.head, self.position)
            if self.on_progress:
                self.on_progress(self.position, self.head)
            self.record_progress()

    def record_progress(self) -> None:
        """Into the rebuild's row, which the admin API reads, at most every PROGRESS_EVERY s."""
        now = time.perf_counter()
        if now - self.recorded_at > PROGRESS_EVERY:
            self.recorded_at = now
            self.rebuilds.progress(self.id, self.position, self.head, self.events, self.elapsed())

    def swap(self, view: TodoRowsView, generation: int) -> RebuildResult:
        """Index the new tables, make them live; keep only the one replaced (still being read)."""
        indexing = time.perf_counter()
        view.create_indexes()
        log.info(
            "%s: caught up at %d; indexes built in %.1fs",
            self.kind,
            self.position,
            time.perf_counter() - indexing,
        )
        self.read_side.activate(self.kind, generation)
        self.report_quarantine(view, generation)
        self.read_side.drop_generations_before(self.kind, generation - 1)
        seconds = self.elapsed()
        self.rebuilds.finish(self.id, self.position, self.head, self.events, seconds)
        return RebuildResult(self.id, self.kind, generation, self.events, seconds, self.position)

    def report_quarantine(self, view: TodoRowsView, generation: int) -> None:
        """A rebuild completes around bad events; say how many todos it set aside."""
        view.load_quarantine()
        if count := len(view.quarantine.ids or ()):
            log.warning(
                "%s: generation %d is live with %d todos quarantined", self.kind, generation, count
            )

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def fail(self, view: TodoRowsView, error: BaseException) -> None:
        self.rebuilds.fail(self.id, self.events, self.elapsed(), repr(error))
        view.drop()


@dataclass(frozen=True)
class PartitionJob:
    """One process's share of a partitioned replay: plain data, so it pickles to a spawn."""

    database_url: str
    env: dict[str, str]
    schema: str
    kind: str
    generation: int
    after: int
    until: int
    batch_size: int
    partition: int
    partitions: int

    @property
    def tracking_name(self) -> str:
        """Each partition tracks its own position, so a rerun resumes it."""
        return f"{APPLICATION_NAME}#{self.partition}"


def _replay_partition(job: PartitionJob) -> int:
    """Runs in a spawned process: ``job``'s todos in (after, until]; how many events."""
    read_side = ReadSide(job.database_url, job.env, job.schema)
    app = read_side.application(pool_size=1)
    view = read_side.open_view(job.kind, job.generation)
    try:
        return _apply_partition(job, app, view)
    finally:
        view.datastore.close()
        app.close()


def _apply_partition(job: PartitionJob, app: TodoApplication, view: TodoRowsView) -> int:
    recorder = app.recorder
    assert isinstance(recorder, AppendOnlyApplicationRecorder)
    position = max(view.max_tracking_id(job.tracking_name) or 0, job.after)
    count = 0
    while position < job.until:
        notifications = recorder.select_partition(
            position, job.until, job.partitions, job.partition, job.batch_size
        )
        if not notifications:
            break
        position = notifications[-1].id
        view.apply(
            [(decode(app.mapper, n), n.id) for n in notifications],
            Tracking(job.tracking_name, position),
        )
        count += len(notifications)
    return count


def _read_ahead(app: TodoApplication, position: int, batch_size: int) -> Iterator[Page]:
    """Decoded pages of the log after ``position`` until the head, read by a thread."""
    pages: queue.Queue[Page | BaseException | None] = queue.Queue(maxsize=3)
    stop = threading.Event()
    reader = threading.Thread(
        target=_read_pages,
        args=(app, position, batch_size, pages, stop),
        name="rebuild-reader",
        daemon=True,
    )
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


def _head(app: TodoApplication) -> int:
    return app.recorder.max_notification_id() or 0


def _read_pages(
    app: TodoApplication,
    start: int,
    batch_size: int,
    pages: queue.Queue[Page | BaseException | None],
    stop: threading.Event,
) -> None:
    """The reader thread: pages until the head, then None; or the error that stopped it."""
    try:
        while not stop.is_set():
            notifications = app.recorder.select_notifications(start=start + 1, limit=batch_size)
            if notifications:
                start = notifications[-1].id
                pages.put([(decode(app.mapper, n), n.id) for n in notifications])
            if len(notifications) < batch_size and start >= _head(app):
                break
        pages.put(None)
    except BaseException as e:
        pages.put(e)
