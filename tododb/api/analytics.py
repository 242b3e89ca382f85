"""The caller's activity figures per day, from the analytics consumer's tables."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tododb.api.auth import CurrentUser
from tododb.api.deps import Analytics
from tododb.api.problems import Problem
from tododb.api.schemas import ProblemOut
from tododb.consumers.analytics.store import today

MAX_DAYS = 366
DEFAULT_DAYS = 30

router = APIRouter(
    prefix="/v1/analytics",
    tags=["analytics"],
    responses={
        code: {"model": ProblemOut, "content": {"application/problem+json": {}}}
        for code in (401, 422)
    },
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


@router.get("", response_model=AnalyticsOut)
def get_analytics(
    user: CurrentUser,
    store: Analytics,
    from_: Annotated[date | None, Query(alias="from", description="First day (UTC).")] = None,
    to: Annotated[date | None, Query(description="Last day (UTC), default today.")] = None,
) -> AnalyticsOut:
    """Days without activity are left out; figures are by the event's UTC day."""
    end = to or today()
    start = from_ or end - timedelta(days=DEFAULT_DAYS - 1)
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
    )
