"""Admin endpoints (admin claim): projection status, zero-downtime rebuilds, quarantine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel

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


def get_projections_admin(request: Request) -> ProjectionsAdmin:
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
