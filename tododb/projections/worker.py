"""The projection worker: one library ProjectionRunner per read model, in standby pairs.

Each read model is run by exactly one process at a time (an advisory lock); other
workers stand by and take over when it dies. The runner follows the log through the
library's LISTEN/NOTIFY subscription and switches when a rebuild swaps generations.
It reads the log through ``ProjectionApplication``, whose mapper turns an event it cannot
decode into a placeholder the view quarantines: one bad event never stops the runner.
Only infrastructure errors (the database unreachable) still fail it into a restart.
"""

from __future__ import annotations

import logging
import threading

from eventsourcing.projection import ProjectionRunner

from tododb.infra.leadership import AdvisoryLock
from tododb.infra.retry import Backoff
from tododb.projections.projection import TodoRowsProjection, projection_class
from tododb.projections.quarantine import ProjectionApplication
from tododb.projections.registry import KINDS, ReadSide
from tododb.projections.views import VIEW_CLASSES

log = logging.getLogger(__name__)

RESTART_BACKOFF = Backoff(0.25, 1.0)
"""Capped low: after a database outage the projection resumes within about a second."""


def run_projection(read_side: ReadSide, kind: str, stop: threading.Event) -> None:
    """Run ``kind`` until ``stop`` is set: acquire, run, re-acquire after any failure."""
    lock = AdvisoryLock(read_side.database_url, f"projection:{kind}")
    failures = 0
    while not stop.is_set():
        if not lock.acquire(stop):
            return
        try:
            _run_while_leader(read_side, kind, lock, stop)
            failures = 0
        except Exception:
            failures += 1
            delay = RESTART_BACKOFF.delay(failures)
            log.exception("projection %s failed; restarting in %.1fs", kind, delay)
            stop.wait(delay)
        finally:
            lock.release()


def _run_while_leader(
    read_side: ReadSide, kind: str, lock: AdvisoryLock, stop: threading.Event
) -> None:
    while not stop.is_set() and lock.is_held():
        generation = read_side.active_generation(kind)
        log.info("projection %s: running generation %d", kind, generation)
        with ProjectionRunner(
            application_class=ProjectionApplication,
            projection_class=projection_class(kind, generation),
            view_class=VIEW_CLASSES[kind],
            env=read_side.runner_env(kind, generation),
        ) as runner:
            projection = runner.projection
            assert isinstance(projection, TodoRowsProjection)
            try:
                runner.view.create_indexes()
                while (
                    not stop.is_set()
                    and lock.is_held()
                    and read_side.active_generation(kind) == generation
                ):
                    runner.run_forever(timeout=1.0)  # re-raises the processing thread's error
                    projection.raise_if_failed()  # and the writer's, even with no new events
            finally:
                projection.close()
        if not stop.is_set() and lock.is_held():
            log.info("projection %s: generation swapped, switching", kind)


def run_all(read_side: ReadSide, stop: threading.Event, kinds: tuple[str, ...] = KINDS) -> None:
    """Run every projection in its own thread until ``stop`` is set."""
    read_side.ensure()
    threads = [
        threading.Thread(target=run_projection, args=(read_side, k, stop), name=f"projection-{k}")
        for k in kinds
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
