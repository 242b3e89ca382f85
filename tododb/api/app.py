"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tododb.api import (
    admin,
    admin_relay,
    analytics,
    health,
    notifications,
    queries,
    todos,
    webhooks,
)
from tododb.api.body_limit import BodySizeLimit
from tododb.api.metrics import Metrics, MetricsMiddleware
from tododb.api.positions import PositionWatcher
from tododb.api.problems import install_problem_handlers
from tododb.application import TodoApplication
from tododb.projections.queries import ReadModelQueries
from tododb.projections.registry import ReadSide
from tododb.settings import Settings

DESCRIPTION = """
An event-sourced todo backend. Every change is an event in an append-only PostgreSQL
event store; command responses carry `X-Position`, the global log position of their
last event. Errors are RFC 9457 `application/problem+json`.
"""


def create_app(
    settings: Settings,
    todo_app: TodoApplication,
    read_side: ReadSide,
    *,
    close_on_shutdown: bool = True,
) -> FastAPI:
    watcher = PositionWatcher(read_side.database_url, read_side.schema)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        read_side.ensure()
        watcher.start()
        try:
            yield
        finally:
            watcher.stop()
            if close_on_shutdown:
                todo_app.close()

    app = FastAPI(
        title="tododb",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.todo_app = todo_app
    app.state.read_side = read_side
    app.state.read_queries = ReadModelQueries(read_side.schema)
    app.state.position_watcher = watcher
    app.state.read_wait_seconds = settings.read_wait_seconds
    app.state.jwt_secret = settings.resolved_jwt_secret()
    app.state.jwt_leeway = settings.jwt_leeway_seconds
    app.state.kafka_topic = settings.kafka_topic
    app.state.webhook_allow_private_targets = settings.webhook_allow_private_targets
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    metrics = Metrics(watcher)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.mount("/metrics", metrics.asgi_app)
    app.include_router(health.router)
    app.include_router(queries.router)
    app.include_router(todos.router)
    app.include_router(admin.router)
    app.include_router(admin_relay.router)
    app.include_router(webhooks.router)
    app.include_router(notifications.router)
    app.include_router(analytics.router)
    return app
