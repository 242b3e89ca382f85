"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tododb.api import health, todos
from tododb.api.body_limit import BodySizeLimit
from tododb.api.problems import install_problem_handlers
from tododb.application import TodoApplication
from tododb.settings import Settings

DESCRIPTION = """
An event-sourced todo backend. Every change is an event in an append-only PostgreSQL
event store; command responses carry `X-Position`, the global log position of their
last event. Errors are RFC 9457 `application/problem+json`.
"""


def create_app(
    settings: Settings, todo_app: TodoApplication, *, close_on_shutdown: bool = True
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if close_on_shutdown:
            todo_app.close()

    app = FastAPI(
        title="tododb",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.todo_app = todo_app
    app.state.jwt_secret = settings.resolved_jwt_secret()
    app.state.jwt_leeway = settings.jwt_leeway_seconds
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.include_router(health.router)
    app.include_router(todos.router)
    return app
