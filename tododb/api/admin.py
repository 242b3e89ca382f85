"""Admin endpoints (admin claim): the pipeline's status, projection status,
zero-downtime rebuilds, quarantine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, Field

from tododb.api.auth import AdminUser
from tododb.api.problems import Problem
from tododb.api.schemas import problem_responses
from tododb.projections.admin import (
    NothingToResolve,
    NotQuarantined,
    ProjectionsAdmin,
    RebuildAlreadyRunning,
    Resolution,
    UnknownProjection,
)

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)


class RebuildOut(BaseModel):
    id: str
    name: str
    generation: int
    status: Literal["pending", "running", "completed", "failed"]
    position: int
    head: int
    events_per_second: float | None
    started_at: datetime
    finished_at: datetime | None
    error: str | None


class ProjectionOut(BaseModel):
    name: str
    generation: int
    position: int
    head: int
    lag: int
    state: Literal["running", "rebuilding", "stopped"]
    last_rebuild: dict[str, Any] | None
    quarantined: int
    lag_seconds: float = 0.0
    """Age of the oldest event not applied yet (0 when caught up)."""
    active_process: str | None = None
    """`host:pid` of the worker running it, if any."""


class QuarantinedOut(BaseModel):
    """A quarantined todo: its failed event, why, and how many of its events wait behind."""

    todo_id: UUID
    position: int
    version: int
    topic: str
    error: str
    held: int
    quarantined_at: datetime


class ResolutionOut(BaseModel):
    todo_id: UUID
    released: bool
    applied: int
    """Events applied to the view by this retry or skip."""
    quarantined: QuarantinedOut | None
    """The todo's head if an event failed again (the same one, or a later one)."""


class ApiPart(BaseModel):
    state: str = Field(description="`ready`: this API process answered.")
    process: str = Field(description="`host:pid` of the API process that answered.")
    url: str | None = None


class ProjectionPart(BaseModel):
    name: str
    generation: int
    position: int = Field(description="Log position applied.")
    lag: int = Field(description="Events not applied yet.")
    lag_seconds: float = Field(description="Age of the oldest event not applied (0: caught up).")
    state: Literal["running", "rebuilding", "stopped"]
    active_process: str | None = Field(description="`host:pid` holding its lock, if any.")
    quarantined: int


class RelayPart(BaseModel):
    position: int = Field(description="Log position published.")
    lag: int = Field(description="Events not published yet.")
    lag_seconds: float = Field(description="Age of the oldest event not published (0: caught up).")
    state: Literal["running", "stopped"]
    active_process: str | None = Field(description="`host:pid` holding the relay's lock, if any.")
    quarantined: int
    held: int


class ConsumerPart(BaseModel):
    group: str
    topic: str
    position: int = Field(description="Sum of the group's committed offsets.")
    end: int = Field(description="Sum of the partitions' end offsets.")
    lag: int | None = Field(description="Messages not consumed yet (null: broker unreachable).")
    lag_seconds: float | None = Field(
        description="Age of the oldest message not consumed yet (0: caught up)."
    )
    state: str = Field(description="`running` (members), `stopped` (none), or `unknown`.")
    members: list[str] = Field(description="`client_id@host` of each member.")
    dlq_depth: int | None = Field(description="Dead letters not redriven yet.")
    parked: int = Field(description="Keys (todos) parked behind a dead letter.")
    error: str | None = Field(description="Why the broker could not be read, if so.")


class PipelineStatusOut(BaseModel):
    generated_at: datetime
    head: int = Field(description="The event log's last position.")
    api: ApiPart
    projections: list[ProjectionPart]
    relay: RelayPart
    consumers: list[ConsumerPart]


@router.get("/status", response_model=PipelineStatusOut)
def pipeline_status(_: AdminUser, request: Request) -> PipelineStatusOut:
    """The whole pipeline (what `todo status` shows): each projection, the relay and each
    consumer group, with its position, lag in events and seconds, state and active process."""
    read = request.app.state.services.pipeline_status
    if read is None:
        raise Problem(
            503,
            "Status unavailable",
            "this API was built without it",
            type_="unavailable",
            headers={"Retry-After": "60"},
        )
    return PipelineStatusOut(**read())


async def get_projections_admin(request: Request) -> ProjectionsAdmin:
    admin: ProjectionsAdmin = request.app.state.services.projections
    return admin


Admin = Annotated[ProjectionsAdmin, Depends(get_projections_admin)]


@router.get("/projections", response_model=list[ProjectionOut])
def list_projections(_: AdminUser, admin: Admin) -> list[ProjectionOut]:
    return [ProjectionOut(**s.as_dict()) for s in admin.status()]


@router.post(
    "/projections/{name}/rebuild", status_code=status.HTTP_202_ACCEPTED, response_model=RebuildOut
)
def start_rebuild(name: str, response: Response, _: AdminUser, admin: Admin) -> RebuildOut:
    """Start a blue/green rebuild in the background; follow it at the Location given."""
    try:
        row = admin.start_rebuild(name)
    except UnknownProjection:
        raise _unknown(admin) from None
    except RebuildAlreadyRunning:
        raise Problem(
            409, "Rebuild in progress", f"{name} is already being rebuilt", type_="conflict"
        ) from None
    response.headers["Location"] = f"/v1/admin/projections/{name}/rebuilds/{row['id']}"
    return RebuildOut(**row)


@router.get("/projections/{name}/rebuilds/{rebuild_id}", response_model=RebuildOut)
def get_rebuild(name: str, rebuild_id: str, _: AdminUser, admin: Admin) -> RebuildOut:
    row = admin.get_rebuild(name, rebuild_id)
    if row is None:
        raise Problem(404, "Rebuild not found", type_="not-found")
    return RebuildOut(**row)


@router.get("/projections/{name}/quarantine", response_model=list[QuarantinedOut])
def list_quarantine(name: str, _: AdminUser, admin: Admin) -> list[QuarantinedOut]:
    """The todos whose events are quarantined in the live generation, in log order."""
    try:
        todos = admin.quarantine(name)
    except UnknownProjection:
        raise _unknown(admin) from None
    return [QuarantinedOut(**asdict(t)) for t in todos]


@router.post("/projections/{name}/quarantine/{todo_id}/retry", response_model=ResolutionOut)
def retry_quarantined(name: str, todo_id: UUID, _: AdminUser, admin: Admin) -> ResolutionOut:
    """Apply the todo's quarantined events again (after a fix); released if all apply."""
    return _resolve(admin, admin.retry, name, todo_id)


@router.post("/projections/{name}/quarantine/{todo_id}/skip", response_model=ResolutionOut)
def skip_quarantined(name: str, todo_id: UUID, _: AdminUser, admin: Admin) -> ResolutionOut:
    """Record the failing event as skipped, then apply the events held behind it."""
    return _resolve(admin, admin.skip, name, todo_id)


def _resolve(
    admin: ProjectionsAdmin,
    action: Callable[[str, UUID], Resolution],
    name: str,
    todo_id: UUID,
) -> ResolutionOut:
    try:
        done = action(name, todo_id)
    except UnknownProjection:
        raise _unknown(admin) from None
    except NotQuarantined:
        raise Problem(
            404, "Not quarantined", f"{name} never quarantined todo {todo_id}", type_="not-found"
        ) from None
    except NothingToResolve:
        raise Problem(
            409,
            "Nothing to resolve",
            f"no event of todo {todo_id} is quarantined in {name}",
            type_="conflict",
        ) from None
    head = None if done.quarantined is None else QuarantinedOut(**asdict(done.quarantined))
    return ResolutionOut(
        todo_id=done.todo_id, released=done.released, applied=done.applied, quarantined=head
    )


def _unknown(admin: ProjectionsAdmin) -> Problem:
    return Problem(404, "Unknown projection", f"known: {', '.join(admin.KINDS)}", type_="not-found")
