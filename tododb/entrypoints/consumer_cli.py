"""`todo consumer ...`: the notification and analytics consumers, DLQ redrive, and the
parked keys (list, retry, skip)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tododb.entrypoints.database_url import resolve_database_url
from tododb.entrypoints.log_setup import configure_logging
from tododb.infra.settings import get_settings

app = typer.Typer(help="Kafka consumers: notifications, analytics.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter topics.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


if TYPE_CHECKING:
    from tododb.consumers.core import ConsumerService

GroupArg = Annotated[str, typer.Argument(help="Consumer group, e.g. notifications.")]
KeyArg = Annotated[str, typer.Argument(help="The parked key: a todo id.")]
ConsumerOpt = Annotated[
    str | None,
    typer.Option(help="notifications or analytics; default: GROUP, when it is one of them."),
]


def _database_url() -> str:
    return resolve_database_url(get_settings(), embedded_ok=False)


def _on_parking(
    group: str, consumer: str | None, action: Callable[[ConsumerService], Awaitable[Any]]
) -> Any:
    """Run ``action`` on GROUP's consumer core (its handler, inbox and parked table)."""
    from tododb.consumers.runner import CONSUMERS, consumer_service

    name = consumer or group
    if name not in CONSUMERS:
        raise typer.BadParameter(f"give --consumer ({' or '.join(CONSUMERS)}) for group {group}")

    async def main() -> Any:
        service = consumer_service(get_settings(), _database_url(), name, group_id=group)
        try:
            await service.open()
            return await action(service)
        finally:
            await service.close()

    return asyncio.run(main())


ProbePortOpt = Annotated[
    int | None,
    typer.Option(help="Port of /metrics, /healthz, /readyz (TODO_PROBE_PORT; 0: none)."),
]


@app.command()
def notifications(probe_port: ProbePortOpt = None) -> None:
    """Turn events into notifications, fire reminders at their time, and deliver both to
    webhooks."""
    from tododb.consumers.runner import NotificationsService

    configure_logging("notifications")
    service = NotificationsService(get_settings(), _database_url())
    _run_with_probes(service.consumer, service.run, probe_port)


@app.command()
def analytics(probe_port: ProbePortOpt = None) -> None:
    """Aggregate per-user, per-day figures."""
    from tododb.consumers.runner import AnalyticsService

    configure_logging("analytics")
    service = AnalyticsService(get_settings(), _database_url())
    _run_with_probes(service.consumer, service.run, probe_port)


def _run_with_probes(
    consumer: ConsumerService,
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    probe_port: int | None,
) -> None:
    """Run ``main`` until a signal, with the worker's /metrics, /healthz and /readyz on
    TODO_PROBE_PORT (none when 0)."""
    from tododb.infra.aio import run_until_signal
    from tododb.infra.gc_tuning import settle_after_startup
    from tododb.infra.probes import Heartbeat
    from tododb.monitoring.workers import beating, consumer_probes

    settings = get_settings()
    if probe_port is not None:
        settings = settings.model_copy(update={"probe_port": probe_port})
    heartbeat = Heartbeat()
    probes, watcher = consumer_probes(settings, consumer.database_url, consumer, heartbeat)
    if settings.probe_port:
        watcher.start()
        probes.start()
    settle_after_startup()
    try:
        run_until_signal(beating(main, heartbeat))
    finally:
        probes.stop()
        watcher.stop()


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


@app.command()
def parked(group: GroupArg, consumer: ConsumerOpt = None) -> None:
    """List GROUP's parked keys: how many messages wait, and why the first one failed."""
    configure_logging()
    keys = _on_parking(group, consumer, lambda service: service.parking.summary())
    typer.echo(json.dumps({"group": group, "parked": [k.as_json() for k in keys]}))


@app.command()
def retry(group: GroupArg, key: KeyArg, consumer: ConsumerOpt = None) -> None:
    """Handle KEY's parked messages again, in order; the key is released when all pass.

    Exits 1 if one fails again: it stays parked there, with its new error."""
    configure_logging()
    release = _on_parking(group, consumer, lambda service: service.retry_parked(key))
    typer.echo(json.dumps({"group": group, **release.as_json()}))
    raise typer.Exit(0 if release.released else 1)


@app.command()
def skip(group: GroupArg, key: KeyArg, consumer: ConsumerOpt = None) -> None:
    """Give up on KEY's first parked message (kept as 'skipped'), then retry the rest.

    Exits 1 if one of the rest fails: the key stays parked there."""
    configure_logging()
    release = _on_parking(group, consumer, lambda service: service.skip_parked(key))
    typer.echo(json.dumps({"group": group, **release.as_json()}))
    raise typer.Exit(0 if release.released else 1)
