"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from eventsourcing.persistence import OperationalError as StoreOperationalError
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import OperationalError as PgOperationalError
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from tododb.application import (
    ConcurrencyConflict,
    Forbidden,
    IdempotencyKeyReused,
    ListNotFound,
    PreconditionFailed,
    TodoGone,
    TodoNotFound,
    VersionNotFound,
)
from tododb.domain import (
    InboxFixed,
    InvariantViolation,
    LastOwner,
    ListDeletedError,
    StepNotFound,
)
from tododb.infra.postgres import DatabaseUnavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://tododb.dev/problems/"


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + problem.type if problem.type else "about:blank",
        "title": problem.title,
        "status": problem.status,
        "instance": request.url.path,
    }
    if problem.detail:
        body["detail"] = problem.detail
    body.update(jsonable_encoder(problem.extensions))
    return JSONResponse(
        body, status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers
    )


_HTTP_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Bad request", None),  # FastAPI: a body that does not even decode
    404: ("Not found", None),
    405: ("Method not allowed", None),
    413: ("Request body too large", "too-large"),  # BodySizeLimit, on a streamed body
}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP error"


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def allowed_methods(app: Starlette, scope: Scope) -> list[str]:
    """Every method some route of ``app`` answers at the request's path, for ``Allow``:
    each is tried on the routes (``matches``, which included routers answer too)."""
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


_DOMAIN_ERRORS: dict[type[Exception], tuple[int, str, str]] = {
    TodoNotFound: (404, "Todo not found", "not-found"),
    ListNotFound: (404, "List not found", "not-found"),
    ListDeletedError: (404, "List not found", "not-found"),
    StepNotFound: (404, "Step not found", "not-found"),
    Forbidden: (403, "Forbidden", "forbidden"),
    LastOwner: (409, "Last owner", "last-owner"),
    InboxFixed: (409, "Inbox is fixed", "inbox-fixed"),
    VersionNotFound: (404, "Version not found", "version-not-found"),
    TodoGone: (410, "Todo deleted", "deleted"),
    ConcurrencyConflict: (409, "Concurrent modification", "conflict"),
    IdempotencyKeyReused: (422, "Idempotency-Key reused", "idempotency-key-reused"),
}


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        title, type_ = _HTTP_ERRORS.get(status, (_phrase(status), None))
        # Starlette's default detail only repeats the status phrase.
        detail: str | None = exc.detail if isinstance(exc.detail, str) else None
        if detail in (title, _phrase(status)):
            detail = None
        headers = dict(exc.headers or {})
        if status == 405:
            # Starlette names only the methods of the one route it tried; a path may have
            # several (GET /v1/todos/{id} is a query, PATCH and DELETE are commands).
            allowed = allowed_methods(request.app, request.scope)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
        return problem_response(
            request, Problem(status, title, detail, type_=type_, headers=headers)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return problem_response(
            request,
            Problem(
                422,
                "Invalid request",
                "the request failed validation",
                type_="validation",
                errors=errors,
            ),
        )

    @app.exception_handler(InvariantViolation)
    async def _invariant(request: Request, exc: InvariantViolation) -> JSONResponse:
        return problem_response(
            request,
            Problem(
                422,
                "Invalid request",
                exc.message,
                type_="validation",
                errors=[{"loc": ["body", exc.field], "msg": exc.message, "type": "invariant"}],
            ),
        )

    @app.exception_handler(PreconditionFailed)
    async def _precondition(request: Request, exc: PreconditionFailed) -> JSONResponse:
        return problem_response(
            request,
            Problem(
                412,
                "Precondition failed",
                f"If-Match does not match the current version {exc.current_version}",
                type_="precondition-failed",
                current_version=exc.current_version,
                headers={"ETag": f'"{exc.current_version}"'},
            ),
        )

    for error, (status, title, type_) in _DOMAIN_ERRORS.items():

        def _handler(
            request: Request,
            exc: Exception,
            status: int = status,
            title: str = title,
            type_: str = type_,
        ) -> JSONResponse:
            return problem_response(request, Problem(status, title, str(exc) or None, type_=type_))

        app.add_exception_handler(error, _handler)

    for unavailable in (
        StoreOperationalError,
        PgOperationalError,
        PoolTimeout,
        DatabaseUnavailable,
    ):

        def _unavailable(request: Request, exc: Exception) -> JSONResponse:
            log.warning("database unavailable: %s", exc)
            return problem_response(
                request,
                Problem(
                    503,
                    "Service unavailable",
                    "the database is unreachable",
                    type_="unavailable",
                    headers={"Retry-After": "1"},
                ),
            )

        app.add_exception_handler(unavailable, _unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, Problem(500, "Internal server error"))
