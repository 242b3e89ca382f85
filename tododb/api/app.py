"""The FastAPI application factory: routes and middleware around services it is handed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from tododb.api import (
    admin,
    admin_relay,
    analytics,
    health,
    lists,
    notifications,
    queries,
    stream,
    sync,
    todos,
    webhooks,
)
from tododb.api.auth import TokenVerifier
from tododb.api.body_limit import BodySizeLimit
from tododb.api.metrics import Metrics, MetricsMiddleware, shared_dir
from tododb.api.positions import PositionWatcher, WaitSlots
from tododb.api.problems import install_problem_handlers
from tododb.api.ratelimit import RateLimits
from tododb.api.request_tracing import RequestTracing
from tododb.api.schemas import problem_responses
from tododb.application import TodoApplication
from tododb.consumers.analytics.store import AnalyticsStore
from tododb.consumers.notifications.store import NotificationsStore
from tododb.infra.postgres import ConnectionFactory
from tododb.infra.settings import Settings
from tododb.infra.tracing import setup_tracing
from tododb.projections.admin import ProjectionsAdmin
from tododb.projections.queries import ChangeQueries, ReadModelQueries

DESCRIPTION = """
An event-sourced todo backend. Every change is an event in an append-only PostgreSQL
event store; command responses carry `X-Position`, the global log position of their
last event. Errors are RFC 9457 `application/problem+json`.
"""

RATE_LIMITED = problem_responses(
    429, described={429: "Rate limit reached (per user); see Retry-After."}
)

NO_NATIVE_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "operation_spans": False,
    "metrics": False,
    "logs": False,
}
"""FastAPI's own OpenTelemetry, off: it turns itself on once a tracer provider is set,
and then adds a second server span beside ``RequestTracing``'s and a span for every
dependency, endpoint and serialisation (a quarter of a command's CPU in
bench/http_api.py --tracing). Requests are traced by ``RequestTracing``, and measured by
the Prometheus metrics."""


@dataclass(frozen=True)
class ApiServices:
    """What the composition root hands the API; the API builds none of it."""

    todo_app: TodoApplication
    connect: ConnectionFactory
    """Pooled connections for the read models' queries."""
    read_queries: ReadModelQueries
    positions: PositionWatcher
    notifications: NotificationsStore
    analytics: AnalyticsStore
    projections: ProjectionsAdmin
    relay_status: Callable[[], dict[str, Any]]
    database_url: str
    """For readiness probes, which open a connection of their own (never the pool's)."""
    pipeline_status: Callable[[], dict[str, Any]] | None = None
    """The whole pipeline's figures for ``GET /v1/admin/status`` (``monitoring.pipeline``)."""


def create_app(
    settings: Settings, services: ApiServices, *, close_on_shutdown: bool = True
) -> FastAPI:
    change_queries = ChangeQueries(settings.views_schema)
    hub = stream.StreamHub(
        services.database_url,
        change_queries,
        max_per_user=settings.stream_max_per_user,
        queue_max=settings.stream_queue_max,
    )

    metrics = Metrics(
        services.positions,
        services.projections.quarantined_counts,
        services.todo_app.write_figures,
        shared=shared_dir(),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        services.positions.add_listener(hub.positions_changed)
        hub.start()
        services.positions.start()
        metrics.start()
        undo_signals = stream.watch_shutdown_signals(hub)
        try:
            yield
        finally:
            undo_signals()
            try:
                hub.stop()
                services.positions.stop()
                if close_on_shutdown:
                    services.todo_app.close()
            finally:  # last: the counts of a batch that close() waited for
                metrics.stop()

    app = FastAPI(
        title="tododb",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry=NO_NATIVE_TELEMETRY,
    )
    app.state.services = services
    app.state.read_wait_seconds = settings.read_wait_seconds
    app.state.read_waits = WaitSlots(settings.read_wait_max, settings.read_wait_max_per_user)
    app.state.rate_limits = RateLimits.from_settings(settings)
    app.state.jwt_secret = settings.resolved_jwt_secret()
    app.state.tokens = TokenVerifier(app.state.jwt_secret, settings.jwt_leeway_seconds)
    app.state.kafka_topic = settings.kafka_topic
    app.state.webhook_allow_private_targets = settings.webhook_allow_private_targets
    app.state.change_queries = change_queries
    app.state.sync_tokens = sync.SyncTokens(
        app.state.jwt_secret, settings.sync_token_max_age_seconds
    )
    app.state.sync_token_max_ahead = settings.sync_token_max_ahead
    app.state.stream_hub = hub
    app.state.stream_heartbeat_seconds = settings.stream_heartbeat_seconds
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    setup_tracing("api")
    app.add_middleware(RequestTracing)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # A request is matched against the routers in order, and each router it passes costs
    # ~5 µs and ~3 µs a route: the commands and their reads first; delta sync and the live
    # stream (a client's polls, and one long-lived request per session) after them.
    for module in (
        queries,
        todos,
        lists,
        sync,
        stream,
        admin,
        admin_relay,
        webhooks,
        notifications,
        analytics,
    ):
        # Rate limited through the caller's dependency (``auth.current_user``).
        app.include_router(
            module.router,
            responses=RATE_LIMITED if app.state.rate_limits is not None else None,
        )
    # Last: a request is matched against the routes in order, each check costing ~1% of
    # a command's CPU, and probes and scrapes are few.
    app.include_router(health.router)
    app.mount("/metrics", metrics.asgi_app)
    return app
