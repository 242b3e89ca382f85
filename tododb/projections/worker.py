"""The projection worker: one library ProjectionRunner per read model, in standby pairs.

Each read model is run by exactly one process at a time (an advisory lock); other
workers stand by and take over when it dies. The runner follows the log through the
library's LISTEN/NOTIFY subscription and switches when a rebuild swaps generations.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import threading

from eventsourcing.projection import ProjectionRunner

from tododb.application import TodoApplication
from tododb.leadership import AdvisoryLock
from tododb.projections.projection import TodoRowsProjection, projection_class
from tododb.projections.registry import KINDS, ReadSide
from tododb.projections.views import VIEW_CLASSES

log = logging.getLogger(__name__)


def run_projection(read_side: ReadSide, kind: str, stop: threading.Event) -> None:
    """Run ``kind`` until ``stop`` is set: acquire, run, re-acquire after any failure."""
    lock = AdvisoryLock(read_side.database_url, f"projection:{kind}")
    backoff = 0.5
    while not stop.is_set():
        if not lock.acquire(stop):
            return
        try:
            _run_while_leader(read_side, kind, lock, stop)
            backoff = 0.5
        except Exception:
            log.exception("projection %s failed; restarting in %.1fs", kind, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
        finally:
            lock.release()


def _run_while_leader(
    read_side: ReadSide, kind: str, lock: AdvisoryLock, stop: threading.Event
) -> None:
    while not stop.is_set() and lock.is_held():
        generation = read_side.active_generation(kind)
        log.info("projection %s: running generation %d", kind, generation)
        with ProjectionRunner(
            application_class=TodoApplication,
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


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent dies, so a killed worker leaves no orphans."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def run_children(kinds: tuple[str, ...], stop: threading.Event) -> None:
    """Run ``todo projections run --only KIND`` per kind; restart any that exits."""
    from tododb.supervisor import todo_command

    children: dict[str, subprocess.Popen[bytes]] = {}
    backoff: dict[str, float] = dict.fromkeys(kinds, 0.5)

    def start(kind: str) -> None:
        children[kind] = subprocess.Popen(  # noqa: S603 - our own command
            todo_command("projections", "run", "--only", kind),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    for kind in kinds:
        start(kind)
    try:
        while not stop.wait(0.5):
            for kind, child in children.items():
                if child.poll() is not None:
                    log.warning("projection %s exited with %s; restarting", kind, child.returncode)
                    stop.wait(backoff[kind])
                    backoff[kind] = min(backoff[kind] * 2, 30.0)
                    start(kind)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


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
