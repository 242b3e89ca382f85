"""The caller's notifications, newest first, cursor-paginated."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from tododb.api.auth import CurrentUser
from tododb.api.deps import Notifications
from tododb.api.problems import Problem
from tododb.api.schemas import problem_responses

router = APIRouter(
    prefix="/v1/notifications",
    tags=["notifications"],
    responses=problem_responses(
        400, 401, 422, 503, described={400: "A cursor this API did not issue (`bad-cursor`)."}
    ),
)


class NotificationOut(BaseModel):
    id: int
    event_id: UUID
    todo_id: UUID
    type: str
    message: str
    data: dict[str, Any]
    occurred_at: datetime
    actor: str | None = Field(
        description="Who caused it (never the recipient); null on reminders (type "
        "`reminder`: the time came; `data.set_by` names who set it) and on notifications "
        "made before actors were recorded."
    )
    correlation_id: str | None = Field(
        default=None,
        description="The causing command's correlation id (its `X-Correlation-Id`, else "
        "its trace id); null before it was recorded.",
    )


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"n:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Opaque to clients; a cursor that is not ours is a 400, never a 500."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = text.partition(":")
        if prefix != "n":
            raise ValueError(prefix)
        return int(value)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise Problem(
            400, "Bad cursor", "the cursor is not one this API issued", type_="bad-cursor"
        ) from None


@router.get("", response_model=NotificationPage)
def list_notifications(
    user: CurrentUser,
    store: Notifications,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    # Absent is "the first page"; it never takes null, so it is not documented so.
    cursor: Annotated[
        str | SkipJsonSchema[None],
        Query(max_length=100, description="`next_cursor` of the previous page."),
    ] = None,
) -> NotificationPage:
    before = decode_cursor(cursor) if cursor else None
    rows = store.notifications(user.id, before=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return NotificationPage(
        items=[NotificationOut.model_validate(r) for r in rows],
        next_cursor=encode_cursor(rows[-1]["id"]) if more else None,
    )
