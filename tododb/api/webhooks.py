"""Webhook registrations: where the notifications consumer POSTs the caller's events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Request, Response, status
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, UrlConstraints

from tododb.api.auth import CurrentUser
from tododb.api.downstream import downstream_connection
from tododb.api.problems import Problem
from tododb.api.schemas import ProblemOut
from tododb.egress import refusal

MAX_WEBHOOKS_PER_USER = 20

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    responses={
        code: {"model": ProblemOut, "content": {"application/problem+json": {}}}
        for code in (401, 404, 409, 422)
    },
)

WebhookUrl = Annotated[
    AnyHttpUrl, UrlConstraints(max_length=2000, allowed_schemes=["http", "https"])
]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl
    secret: str = Field(
        min_length=16,
        max_length=256,
        description="Shared secret for the `X-Tododb-Signature` HMAC-SHA256.",
    )


class CircuitOut(BaseModel):
    state: str = Field(description="closed, open or half-open")
    consecutive_failures: int
    open_until: datetime | None


class WebhookOut(BaseModel):
    id: UUID
    url: str
    created_at: datetime
    circuit: CircuitOut


class WebhookList(BaseModel):
    items: list[WebhookOut]


def _out(row: dict[str, Any]) -> WebhookOut:
    open_until = row["circuit_open_until"]
    failures = row["consecutive_failures"]
    if open_until is not None and open_until > datetime.now(open_until.tzinfo):
        state = "open"
    elif open_until is not None:
        state = "half-open"
    else:
        state = "closed"
    return WebhookOut(
        id=row["id"],
        url=row["url"],
        created_at=row["created_at"],
        circuit=CircuitOut(state=state, consecutive_failures=failures, open_until=open_until),
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookOut)
def create_webhook(
    body: WebhookCreate, user: CurrentUser, request: Request, response: Response
) -> WebhookOut:
    if not request.app.state.webhook_allow_private_targets:
        reason = refusal(str(body.url))
        if reason is not None:
            raise Problem(
                422,
                "Webhook target not allowed",
                f"webhooks must point at a public address: {reason}",
                type_="webhook-target-refused",
            )
    with downstream_connection(request) as conn, conn.transaction():
        # Serialise one user's registrations so the limit holds under concurrency.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"webhooks:{user.id}",))
        row = conn.execute(
            "SELECT count(*) AS n FROM notifications.webhooks "
            "WHERE owner = %s AND deleted_at IS NULL",
            (user.id,),
        ).fetchone()
        if row is not None and row["n"] >= MAX_WEBHOOKS_PER_USER:
            raise Problem(
                409,
                "Too many webhooks",
                f"at most {MAX_WEBHOOKS_PER_USER} webhooks per user",
                type_="too-many-webhooks",
            )
        created = conn.execute(
            "INSERT INTO notifications.webhooks (id, owner, url, secret) "
            "VALUES (%s, %s, %s, %s) "
            "RETURNING id, url, created_at, consecutive_failures, circuit_open_until",
            (uuid4(), user.id, str(body.url), body.secret),
        ).fetchone()
    assert created is not None
    response.headers["Location"] = f"/v1/webhooks/{created['id']}"
    return _out(created)


@router.get("", response_model=WebhookList)
def list_webhooks(user: CurrentUser, request: Request) -> WebhookList:
    with downstream_connection(request) as conn:
        rows = conn.execute(
            "SELECT id, url, created_at, consecutive_failures, circuit_open_until "
            "FROM notifications.webhooks "
            "WHERE owner = %s AND deleted_at IS NULL ORDER BY created_at, id",
            (user.id,),
        ).fetchall()
    return WebhookList(items=[_out(r) for r in rows])


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(webhook_id: UUID, user: CurrentUser, request: Request) -> Response:
    """Stops deliveries; the history of attempts is kept."""
    with downstream_connection(request) as conn, conn.transaction():
        row = conn.execute(
            "UPDATE notifications.webhooks SET deleted_at = now() "
            "WHERE id = %s AND owner = %s AND deleted_at IS NULL RETURNING id",
            (webhook_id, user.id),
        ).fetchone()
        if row is None:
            raise Problem(404, "Webhook not found", type_="not-found")
        conn.execute(
            "UPDATE notifications.deliveries SET status = 'cancelled' "
            "WHERE webhook_id = %s AND status = 'pending'",
            (webhook_id,),
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
