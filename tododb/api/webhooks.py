"""Webhook registrations: where the notifications consumer POSTs the caller's events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Request, Response, status
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, UrlConstraints

from tododb.api.auth import CurrentUser
from tododb.api.deps import Notifications
from tododb.api.problems import Problem
from tododb.api.schemas import LOCATION_HEADER, problem_responses, text_rule
from tododb.consumers.notifications.store import TooManyWebhooks
from tododb.infra.egress import refusal

MAX_WEBHOOKS_PER_USER = 20

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

WebhookUrl = Annotated[
    AnyHttpUrl, UrlConstraints(max_length=2000, allowed_schemes=["http", "https"])
]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl
    # Stored in PostgreSQL text and used as UTF-8 key bytes: the domain's text rule.
    secret: Annotated[str, text_rule("secret")] = Field(
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
    state = row["circuit_state"]
    return WebhookOut(
        id=row["id"],
        url=row["url"],
        created_at=row["created_at"],
        circuit=CircuitOut(state=state, consecutive_failures=failures, open_until=open_until),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookOut,
    responses={
        201: {"headers": {"Location": LOCATION_HEADER}},
        **problem_responses(
            400,
            401,
            409,
            413,
            422,
            503,
            described={
                400: "The body is not JSON (not even UTF-8).",
                409: f"The caller has {MAX_WEBHOOKS_PER_USER} webhooks already "
                "(`too-many-webhooks`).",
                422: "The request failed validation (`validation`), or the target is not a "
                "public address (`webhook-target-refused`).",
            },
        ),
    },
)
def create_webhook(
    body: WebhookCreate,
    user: CurrentUser,
    store: Notifications,
    request: Request,
    response: Response,
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
    try:
        created = store.add_webhook(
            user.id, str(body.url), body.secret, limit=MAX_WEBHOOKS_PER_USER
        )
    except TooManyWebhooks as e:
        raise Problem(409, "Too many webhooks", str(e), type_="too-many-webhooks") from None
    response.headers["Location"] = f"/v1/webhooks/{created['id']}"
    return _out(created)


@router.get("", response_model=WebhookList, responses=problem_responses(401, 503))
def list_webhooks(user: CurrentUser, store: Notifications) -> WebhookList:
    return WebhookList(items=[_out(r) for r in store.webhooks(user.id)])


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 404, 422, 503),
)
def delete_webhook(webhook_id: UUID, user: CurrentUser, store: Notifications) -> Response:
    """Stops deliveries; the history of attempts is kept."""
    if not store.delete_webhook(user.id, webhook_id):
        raise Problem(404, "Webhook not found", type_="not-found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
