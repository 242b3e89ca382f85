"""The caller's activity figures per day (their todos') and what they did (as actor),
from the analytics consumer's tables."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator, Field
from pydantic.json_schema import SkipJsonSchema

from tododb.api.auth import CurrentUser
from tododb.api.deps import Analytics
from tododb.api.problems import Problem
from tododb.api.schemas import problem_responses
from tododb.consumers.analytics.store import today

MAX_DAYS = 366
DEFAULT_DAYS = 30

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def iso_date(value: Any) -> Any:
    """Only ``YYYY-MM-DD``: lax mode would read ``0`` as the epoch's day."""
    if not isinstance(value, str) or _ISO_DATE.fullmatch(value) is None:
        raise ValueError("must be an ISO 8601 date, YYYY-MM-DD")
    return value


Day = Annotated[date, BeforeValidator(iso_date)]

router = APIRouter(
    prefix="/v1/analytics",
    tags=["analytics"],
    responses=problem_responses(
        401,
        422,
        503,
        described={
            422: f"The request failed validation, or `from` is after `to` or more than "
            f"{MAX_DAYS} days before it (`validation`)."
        },
    ),
)


class DayOut(BaseModel):
    day: date
    created: int
    completed: int
    reopened: int
    deleted: int
    mean_completion_seconds: float | None


class Totals(BaseModel):
    created: int
    completed: int
    reopened: int
    deleted: int


class AnalyticsOut(BaseModel):
    from_: date = Field(serialization_alias="from")
    to: date
    days: list[DayOut]
    totals: Totals
    actions: dict[str, int] = Field(
        description="What the caller did in the range, by event type (on any list)."
    )


def default_start(end: date) -> date:
    """``DEFAULT_DAYS`` days ending at ``end``, clipped at the first representable day."""
    try:
        return end - timedelta(days=DEFAULT_DAYS - 1)
    except OverflowError:
        return date.min


@router.get("", response_model=AnalyticsOut)
def get_analytics(
    user: CurrentUser,
    store: Analytics,
    # Absent means the default; neither takes null, so neither is documented so.
    from_: Annotated[
        Day | SkipJsonSchema[None],
        Query(alias="from", description="First day (UTC), YYYY-MM-DD; default 30 days to `to`."),
    ] = None,
    to: Annotated[
        Day | SkipJsonSchema[None],
        Query(description="Last day (UTC), YYYY-MM-DD; default today."),
    ] = None,
) -> AnalyticsOut:
    """Days without activity are left out; figures are by the event's UTC day."""
    end = to or today()
    start = from_ or default_start(end)
    if start > end:
        raise Problem(422, "Invalid range", "`from` is after `to`", type_="validation")
    if (end - start).days >= MAX_DAYS:
        raise Problem(422, "Invalid range", f"at most {MAX_DAYS} days", type_="validation")
    days = [DayOut.model_validate(d) for d in store.daily_figures(user.id, start, end)]
    return AnalyticsOut(
        from_=start,
        to=end,
        days=days,
        totals=Totals(
            created=sum(d.created for d in days),
            completed=sum(d.completed for d in days),
            reopened=sum(d.reopened for d in days),
            deleted=sum(d.deleted for d in days),
        ),
        actions=store.actor_totals(user.id, start, end),
    )
