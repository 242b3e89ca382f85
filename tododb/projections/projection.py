"""The library's Projection classes: each event applied to its view exactly once."""

from __future__ import annotations

from functools import cache
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from tododb.projections.views import VIEW_CLASSES, TodoRowsView


class TodoRowsProjection(Projection[TodoRowsView]):
    """Applies each event with its tracking record in the view's own transaction."""

    name = "todo_rows"

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.apply([(domain_event, tracking.notification_id)], tracking)


def generation_name(kind: str, generation: int) -> str:
    return f"{kind}_g{generation}"


@cache
def projection_class(kind: str, generation: int) -> type[TodoRowsProjection]:
    """A Projection class per generation: its name picks the env and the table names."""
    if kind not in VIEW_CLASSES:
        raise KeyError(f"unknown projection {kind!r}; known: {', '.join(VIEW_CLASSES)}")
    name = generation_name(kind, generation)
    return type(f"{kind.title()}ProjectionG{generation}", (TodoRowsProjection,), {"name": name})
