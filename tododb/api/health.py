"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tododb.api.deps import Connect
from tododb.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(connect: Connect) -> Health | JSONResponse:
    """The database answers; load balancers stop routing here when it does not."""
    try:
        with connect() as conn:
            conn.execute("SELECT 1")
    except Exception as e:  # any failure means "not ready", and must not be a 500
        return JSONResponse({"status": "unavailable", "detail": type(e).__name__}, status_code=503)
    return Health(status="ok")
