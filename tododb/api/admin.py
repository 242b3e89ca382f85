"""Admin endpoints (admin claim): projection status and zero-downtime rebuilds."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel

from tododb.api.auth import AdminUser
from tododb.api.problems import Problem
from tododb.api.schemas import ProblemOut
from tododb.projections.admin import (
    ProjectionsAdmin,
    RebuildAlreadyRunning,
    UnknownProjection,
)

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    responses={
        code: {"model": ProblemOut, "content": {"application/problem+json": {}}}
        for code in (401, 403, 404, 409)
    },
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
        raise Problem(
            404, "Unknown projection", f"known: {', '.join(admin.KINDS)}", type_="not-found"
        ) from None
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
