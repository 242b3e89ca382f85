"""The composition root: settings and a database URL in, wired services out.

cosmicpython's ``bootstrap``: the one place that knows which concrete recorder,
pool and store each part gets. Entry points (the CLI, tests, benchmarks) call it;
the parts themselves are handed what they need and never call back here.
"""

from __future__ import annotations

from functools import partial

from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.utils import Environment
from fastapi import FastAPI

from tododb.api.app import ApiServices, create_app
from tododb.api.positions import PositionWatcher
from tododb.application import TodoApplication
from tododb.consumers.analytics.store import AnalyticsStore
from tododb.consumers.notifications.store import NotificationsStore
from tododb.entrypoints.database_url import resolve_database_url
from tododb.entrypoints.log_setup import configure_logging
from tododb.entrypoints.supervisor import stop_with_parent_process
from tododb.eventstore import AppendOnlyApplicationRecorder, TodoPostgresFactory
from tododb.infra.gc_tuning import settle_after_startup
from tododb.infra.postgres import ConnectionFactory, eventsourcing_env
from tododb.infra.settings import Settings, get_settings
from tododb.monitoring.pipeline import pipeline_status, this_api
from tododb.projections.admin import ProjectionsAdmin
from tododb.projections.queries import ReadModelOrderIndex, ReadModelQueries
from tododb.projections.registry import ReadSide
from tododb.relay.service import TRACKING_ENV_NAME, Relay
from tododb.relay.status import RelayStatusReader


def application_env(settings: Settings, database_url: str) -> dict[str, str]:
    return eventsourcing_env(
        database_url,
        schema=settings.db_schema,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_max_overflow,
        connect_timeout=settings.db_connect_timeout,
    )


def build_application(settings: Settings, database_url: str) -> TodoApplication:
    return TodoApplication(
        env=application_env(settings, database_url),
        conflict_retries=settings.conflict_retries,
        command_cache_size=settings.command_cache_size,
    )


def build_read_side(settings: Settings, database_url: str) -> ReadSide:
    return ReadSide(database_url, application_env(settings, database_url), settings.views_schema)


def build_relay(settings: Settings, database_url: str, app: TodoApplication | None = None) -> Relay:
    """A relay on ``app`` (else an application of its own, closed with the relay)."""
    env = Environment(TRACKING_ENV_NAME, application_env(settings, database_url))
    env["POSTGRES_POOL_SIZE"] = "2"
    env["POSTGRES_MAX_OVERFLOW"] = "2"
    tracking = TodoPostgresFactory(env).tracking_recorder()
    assert isinstance(tracking, PostgresTrackingRecorder)
    owns_app = app is None
    app = app or build_application(settings, database_url)
    return Relay(settings, app, tracking, database_url, owns_app=owns_app)


def event_store_connections(app: TodoApplication) -> ConnectionFactory:
    """The event store's own pool lends the API its query connections."""
    recorder = app.recorder
    assert isinstance(recorder, AppendOnlyApplicationRecorder)
    return recorder.datastore.get_connection


def build_api_services(
    settings: Settings, todo_app: TodoApplication, read_side: ReadSide
) -> ApiServices:
    connect = event_store_connections(todo_app)
    # Moves ask the todos read model for a neighbour's key they were not given.
    todo_app.order_index = ReadModelOrderIndex(connect, read_side.schema)
    return ApiServices(
        todo_app=todo_app,
        connect=connect,
        read_queries=ReadModelQueries(read_side.schema),
        positions=PositionWatcher(read_side.database_url, read_side.schema),
        notifications=NotificationsStore(connect),
        analytics=AnalyticsStore(connect),
        projections=ProjectionsAdmin(read_side, todo_app.head_position),
        relay_status=RelayStatusReader(connect, settings.db_schema),
        database_url=read_side.database_url,
        pipeline_status=partial(pipeline_status, settings, read_side, api=this_api()),
    )


def prepare_schemas(services: ApiServices, read_side: ReadSide) -> None:
    """Each service creates its own tables (``IF NOT EXISTS``) through its own module,
    so the API can serve before the workers have first started."""
    read_side.ensure()
    services.notifications.create_schema()
    services.analytics.create_schema()


def build_api(settings: Settings, database_url: str) -> FastAPI:
    todo_app = build_application(settings, database_url)
    read_side = build_read_side(settings, database_url)
    services = build_api_services(settings, todo_app, read_side)
    prepare_schemas(services, read_side)
    return create_app(settings, services)


def api_from_environment() -> FastAPI:
    """The API for one worker of `todo serve --workers N`, from the environment alone.

    uvicorn starts each worker as a fresh (spawned) process and can hand it nothing but
    an import string, so the worker reads the settings and ``DATABASE_URL`` itself and
    builds its own application, pool and position watcher: nothing is shared between
    workers but the listening socket and the database. It stops when `todo serve` dies.
    """
    stop_with_parent_process()
    configure_logging("api")
    settings = get_settings()
    api = build_api(settings, resolve_database_url(settings, embedded_ok=False))
    settle_after_startup()
    return api
