"""Liveness and readiness probes: answered on the event loop, never queued for a worker
thread or a pooled connection, so they stay fast and true while the database is away."""

from __future__ import annotations

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tododb.api.schemas import Health

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 2
"""libpq's smallest connect timeout; a refused connection answers at once."""


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={
        503: {
            "model": Health,
            "description": "The database does not answer a fresh connection: "
            '`{"status": "unavailable", "detail": "<error class>"}`.',
        }
    },
)
async def readyz(request: Request) -> Health | JSONResponse:
    """The database answers a fresh connection; load balancers stop routing here when it
    does not. Not the pool: it may be exhausted by the very requests that are failing."""
    url: str = request.app.state.services.database_url
    try:
        async with await psycopg.AsyncConnection.connect(
            url, connect_timeout=READY_TIMEOUT_SECONDS, autocommit=True
        ) as conn:
            await conn.execute("SELECT 1")
    except Exception as e:  # any failure means "not ready", and must not be a 500
        return JSONResponse({"status": "unavailable", "detail": type(e).__name__}, status_code=503)
    return Health(status="ok")
