"""``GET /v1/admin/relay``: the relay's position, the log's head, the lag."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from tododb.api.auth import AdminUser
from tododb.api.schemas import ProblemOut

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    responses={
        code: {"model": ProblemOut, "content": {"application/problem+json": {}}}
        for code in (401, 403)
    },
)


class RelayStatusOut(BaseModel):
    position: int
    head: int
    lag: int
    active: bool
    topic: str


@router.get("/relay", response_model=RelayStatusOut)
def relay_status(_: AdminUser, request: Request) -> RelayStatusOut:
    state = request.app.state
    return RelayStatusOut(**state.services.relay_status(), topic=state.kafka_topic)
