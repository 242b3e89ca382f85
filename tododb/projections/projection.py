"""The library's Projection classes: each event applied to its view exactly once.

The runner hands over one event at a time; a writer thread applies whatever has queued
up in one transaction (with the tracking record of its last event). Under light load
that is one event per transaction and lowest latency; under heavy load batches grow by
themselves, so the view keeps up instead of falling behind. An event the view cannot
apply is quarantined by the view itself (``TodoRowsView.apply``), in the batch's own
transaction; only an infrastructure error stops the writer, and so the runner.
"""

from __future__ import annotations

import queue
import threading
import time
from functools import cache
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from tododb.infra import tracing
from tododb.projections.views import VIEW_CLASSES, TodoRowsView

MAX_BATCH = 1000
_STOP = object()


class TodoRowsProjection(Projection[TodoRowsView]):
    name = "todo_rows"

    def __init__(self, view: TodoRowsView) -> None:
        super().__init__(view)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=10 * MAX_BATCH)
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write, name=f"{self.name}-writer", daemon=True)
        self._writer.start()

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.raise_if_failed()
        self._queue.put((domain_event, tracking))

    def raise_if_failed(self) -> None:
        """Re-raise the writer's error in the caller (the runner, or its supervisor)."""
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the writer; events not yet applied are simply delivered again later."""
        if self._writer.is_alive():
            self._drain()
            self._queue.put(_STOP)
            self._writer.join()

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _write(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    return
                batch.append(more)
            try:
                started = time.time_ns()
                self.view.apply([(e, t.notification_id) for e, t in batch], batch[-1][1])
                if tracing.exporting():
                    tracing.apply_spans(self.name, [e for e, _ in batch], started)
            except BaseException as e:
                self._error = e
                self._drain()
                return


def generation_name(kind: str, generation: int) -> str:
    return f"{kind}_g{generation}"


@cache
def projection_class(kind: str, generation: int) -> type[TodoRowsProjection]:
    """A Projection class per generation: its name picks the env and the table names."""
    if kind not in VIEW_CLASSES:
        raise KeyError(f"unknown projection {kind!r}; known: {', '.join(VIEW_CLASSES)}")
    name = generation_name(kind, generation)
    return type(f"{kind.title()}ProjectionG{generation}", (TodoRowsProjection,), {"name": name})
