"""Wiring in one place: settings → database URL → application (cosmicpython's bootstrap)."""

from __future__ import annotations

from tododb.application import TodoApplication
from tododb.database import eventsourcing_env, start_embedded
from tododb.projections.registry import ReadSide
from tododb.settings import Settings

RECORDER_TOPIC = "tododb.eventstore:AppendOnlyApplicationRecorder"


def resolve_database_url(settings: Settings, *, embedded_ok: bool) -> str:
    if settings.database_url:
        return settings.database_url
    if not embedded_ok:
        raise SystemExit("DATABASE_URL is not set (use `todo dev` for an embedded PostgreSQL)")
    return start_embedded(settings.data_dir)


def application_env(settings: Settings, database_url: str) -> dict[str, str]:
    env = eventsourcing_env(
        database_url,
        schema=settings.db_schema,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_max_overflow,
        connect_timeout=settings.db_connect_timeout,
    )
    env["APPLICATION_RECORDER_TOPIC"] = RECORDER_TOPIC
    return env


def build_read_side(settings: Settings, database_url: str) -> ReadSide:
    return ReadSide(database_url, application_env(settings, database_url), settings.views_schema)


def build_application(settings: Settings, database_url: str) -> TodoApplication:
    return TodoApplication(
        env=application_env(settings, database_url),
        conflict_retries=settings.conflict_retries,
    )
