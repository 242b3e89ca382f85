"""``GET /v1/admin/relay``: the relay's position, the log's head, the lag, and how many
events it quarantined (could not publish) or holds behind them."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from tododb.api.auth import AdminUser
from tododb.api.schemas import problem_responses

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    responses=problem_responses(401, 403, 503),
)


class RelayStatusOut(BaseModel):
    position: int
    head: int
    lag: int
    lag_seconds: float = Field(
        default=0.0, description="Age of the oldest event not yet published (0 when caught up)."
    )
    active: bool
    active_process: str | None = Field(
        default=None, description="`host:pid` of the relay holding the lock, if any."
    )
    quarantined: int = Field(
        description="Events that could not be published (`todo relay quarantine`)."
    )
    held: int = Field(description="Later events of those todos, held back to keep their order.")
    topic: str


@router.get("/relay", response_model=RelayStatusOut)
def relay_status(_: AdminUser, request: Request) -> RelayStatusOut:
    state = request.app.state
    return RelayStatusOut(**state.services.relay_status(), topic=state.kafka_topic)
