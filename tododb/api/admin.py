"""Admin endpoints (admin claim): projection status and zero-downtime rebuilds."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request, Response, status
from psycopg.sql import SQL, Identifier
from pydantic import BaseModel

from tododb.api.auth import AdminUser
from tododb.api.deps import TodoApp
from tododb.api.problems import Problem
from tododb.api.schemas import ProblemOut
from tododb.leadership import lock_holders
from tododb.projections.rebuild import RebuildInProgress, rebuild, request_rebuild
from tododb.projections.registry import KINDS, ReadSide
from tododb.projections.status import projection_status

log = logging.getLogger(__name__)

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


def _read_side(request: Request) -> ReadSide:
    read_side: ReadSide = request.app.state.read_side
    return read_side


@router.get("/projections", response_model=list[ProjectionOut])
def list_projections(request: Request, _: AdminUser, app: TodoApp) -> list[ProjectionOut]:
    return [
        ProjectionOut(**s.as_dict())
        for s in projection_status(_read_side(request), app.head_position())
    ]


@router.post(
    "/projections/{name}/rebuild", status_code=status.HTTP_202_ACCEPTED, response_model=RebuildOut
)
def start_rebuild(name: str, request: Request, response: Response, _: AdminUser) -> RebuildOut:
    """Start a blue/green rebuild in the background; follow it at the Location given."""
    if name not in KINDS:
        raise Problem(404, "Unknown projection", f"known: {', '.join(KINDS)}", type_="not-found")
    read_side = _read_side(request)
    with read_side.connect() as conn:
        if lock_holders(conn, f"rebuild:{name}"):
            raise Problem(
                409, "Rebuild in progress", f"{name} is already being rebuilt", type_="conflict"
            )
    rebuild_id = request_rebuild(read_side, name)

    def run() -> None:
        try:
            rebuild(read_side, name, rebuild_id=rebuild_id)
        except RebuildInProgress:
            log.warning("rebuild %s of %s: another rebuild started first", rebuild_id, name)
        except Exception:
            log.exception("rebuild %s of %s failed", rebuild_id, name)

    threading.Thread(target=run, name=f"rebuild-{name}", daemon=True).start()
    response.headers["Location"] = f"/v1/admin/projections/{name}/rebuilds/{rebuild_id}"
    return _get_rebuild(read_side, name, rebuild_id)


@router.get("/projections/{name}/rebuilds/{rebuild_id}", response_model=RebuildOut)
def get_rebuild(name: str, rebuild_id: str, request: Request, _: AdminUser) -> RebuildOut:
    return _get_rebuild(_read_side(request), name, rebuild_id)


def _get_rebuild(read_side: ReadSide, name: str, rebuild_id: str) -> RebuildOut:
    with read_side.connect() as conn:
        row = conn.execute(
            SQL(
                "SELECT id::text, name, generation, status, position, head, events_per_second, "
                "started_at, finished_at, error FROM {}.rebuilds "
                "WHERE name = %s AND id::text = %s"
            ).format(Identifier(read_side.schema)),
            (name, rebuild_id),
        ).fetchone()
    if row is None:
        raise Problem(404, "Rebuild not found", type_="not-found")
    return RebuildOut(**row)
