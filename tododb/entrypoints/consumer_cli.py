"""`todo consumer ...`: the notification and analytics consumers, and DLQ redrive."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from tododb.entrypoints.database_url import resolve_database_url
from tododb.entrypoints.log_setup import configure_logging
from tododb.infra.settings import get_settings

app = typer.Typer(help="Kafka consumers: notifications, analytics.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter topics.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


def _database_url() -> str:
    return resolve_database_url(get_settings(), embedded_ok=False)


@app.command()
def notifications() -> None:
    """Turn events into notifications and deliver them to webhooks."""
    from tododb.consumers.runner import NotificationsService
    from tododb.infra.aio import run_until_signal

    configure_logging()
    run_until_signal(NotificationsService(get_settings(), _database_url()).run)


@app.command()
def analytics() -> None:
    """Aggregate per-user, per-day figures."""
    from tododb.consumers.runner import AnalyticsService
    from tododb.infra.aio import run_until_signal

    configure_logging()
    run_until_signal(AnalyticsService(get_settings(), _database_url()).run)


@dlq_app.command()
def redrive(
    group: Annotated[str, typer.Argument(help="Consumer group, e.g. notifications.")],
) -> None:
    """Re-publish GROUP's dead letters to the topic they came from."""
    from tododb.consumers.core import dlq_topic
    from tododb.consumers.core import redrive as redrive_

    configure_logging()
    settings = get_settings()
    moved = asyncio.run(redrive_(settings, group))
    typer.echo(json.dumps({"redriven": moved, "dlq": dlq_topic(settings.kafka_topic, group)}))
