"""What the admin API may do to the read models: status, rebuilds it can follow, and the
quarantine (list, retry, skip; see ``quarantine``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from uuid import UUID

from tododb.infra.leadership import lock_holders
from tododb.projections.quarantine import (
    NothingToResolve,
    NotQuarantined,
    QuarantinedTodo,
    Resolution,
    quarantined_todos,
    read_todo_events,
)
from tododb.projections.rebuild import RebuildInProgress, rebuild, request_rebuild
from tododb.projections.rebuild_log import RebuildLog, RebuildRow
from tododb.projections.registry import KINDS, ReadSide
from tododb.projections.status import (
    ProjectionStatus,
    projection_status,
    quarantine_table,
    quarantined_counts,
)

__all__ = [
    "NotQuarantined",
    "NothingToResolve",
    "ProjectionsAdmin",
    "QuarantinedTodo",
    "RebuildAlreadyRunning",
    "Resolution",
    "UnknownProjection",
]

log = logging.getLogger(__name__)


class UnknownProjection(LookupError):
    """No read model by that name."""


class RebuildAlreadyRunning(Exception):
    """Another rebuild of the projection holds its lock."""


class ProjectionsAdmin:
    """One object for the API to hold, so it needs to know nothing of locks or tables."""

    KINDS = KINDS

    def __init__(self, read_side: ReadSide, head_position: Callable[[], int]) -> None:
        self.read_side = read_side
        self.head_position = head_position
        self.rebuilds = RebuildLog(read_side)

    def status(self) -> list[ProjectionStatus]:
        return projection_status(self.read_side, self.head_position())

    def start_rebuild(self, name: str) -> RebuildRow:
        """Register a rebuild of ``name`` and run it in a daemon thread; its row, pending."""
        _check(name)
        with self.read_side.connect() as conn:
            if lock_holders(conn, f"rebuild:{name}"):
                raise RebuildAlreadyRunning(f"{name} is already being rebuilt")
        rebuild_id = request_rebuild(self.read_side, name)
        threading.Thread(
            target=self._run, args=(name, rebuild_id), name=f"rebuild-{name}", daemon=True
        ).start()
        row = self.get_rebuild(name, rebuild_id)
        if row is None:
            raise LookupError(f"rebuild {rebuild_id} of {name} vanished once registered")
        return row

    def get_rebuild(self, name: str, rebuild_id: str) -> RebuildRow | None:
        return self.rebuilds.get(name, rebuild_id)

    def quarantined_counts(self) -> dict[str, int]:
        """Quarantined todos per projection, in its live generation: a gauge for /metrics."""
        return quarantined_counts(self.read_side)

    def quarantine(self, name: str) -> list[QuarantinedTodo]:
        """The live generation's quarantined todos, in log order."""
        _check(name)
        table = quarantine_table(name, self.read_side.active_generation(name))
        with self.read_side.connect() as conn:
            return quarantined_todos(conn, self.read_side.schema, table)

    def retry(self, name: str, todo_id: UUID) -> Resolution:
        """Apply the todo's quarantined events again (after a fix); NotQuarantined if it
        never was, NothingToResolve if it is not now."""
        return self._resolve(name, todo_id, skip=False)

    def skip(self, name: str, todo_id: UUID) -> Resolution:
        """Record the todo's failing event as skipped, then apply the ones held behind it."""
        return self._resolve(name, todo_id, skip=True)

    def _resolve(self, name: str, todo_id: UUID, *, skip: bool) -> Resolution:
        """Done here, not by the worker: the quarantine's lock serialises the two, so the
        answer can say what happened even when no worker runs."""
        _check(name)
        view = self.read_side.open_view(name, self.read_side.active_generation(name))
        app = self.read_side.application(pool_size=1)
        try:
            return view.resolve(todo_id, partial(read_todo_events, app), skip=skip)
        finally:
            view.datastore.close()
            app.close()

    def _run(self, name: str, rebuild_id: str) -> None:
        """The thread's body: nobody awaits it, so its failures go to the log (and the row)."""
        try:
            rebuild(self.read_side, name, rebuild_id=rebuild_id)
        except RebuildInProgress:
            log.warning("rebuild %s of %s: another rebuild started first", rebuild_id, name)
        except Exception:
            log.exception("rebuild %s of %s failed", rebuild_id, name)


def _check(name: str) -> None:
    if name not in KINDS:
        raise UnknownProjection(f"unknown projection {name!r}; known: {', '.join(KINDS)}")
