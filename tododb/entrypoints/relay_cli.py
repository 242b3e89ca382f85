"""`todo relay ...`: run the relay, show its position, re-publish history, and list, retry
or skip the events it quarantined."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated
from uuid import UUID

import typer

from tododb.entrypoints.database_url import resolve_database_url
from tododb.entrypoints.log_setup import configure_logging
from tododb.infra.settings import get_settings

app = typer.Typer(help="The relay: the event log → Kafka.", no_args_is_help=True)


def _database_url() -> str:
    return resolve_database_url(get_settings(), embedded_ok=False)


@app.command()
def run(
    probe_port: Annotated[
        int | None,
        typer.Option(help="Port of /metrics, /healthz, /readyz (TODO_PROBE_PORT; 0: none)."),
    ] = None,
) -> None:
    """Publish the event log to Kafka (stands by while another relay is active)."""
    from tododb.entrypoints.bootstrap import build_relay
    from tododb.infra.aio import run_until_signal
    from tododb.infra.gc_tuning import settle_after_startup
    from tododb.infra.probes import Heartbeat
    from tododb.monitoring.workers import beating, relay_probes

    configure_logging("relay")
    settings = get_settings()
    if probe_port is not None:
        settings = settings.model_copy(update={"probe_port": probe_port})
    database_url = _database_url()
    relay = build_relay(settings, database_url)
    settle_after_startup()
    heartbeat = Heartbeat()
    probes = relay_probes(settings, database_url, relay, heartbeat)
    if settings.probe_port:
        probes.start()
    try:
        run_until_signal(beating(relay.run, heartbeat))
    finally:
        probes.stop()
        relay.close()


@app.command()
def status() -> None:
    """Print the relay's position, the log's head, the lag and the quarantined count, as JSON."""
    from tododb.relay.status import relay_status

    settings = get_settings()
    status = relay_status(
        _database_url(), settings.db_schema, connect_timeout=settings.db_connect_timeout
    )
    typer.echo(json.dumps(status))


@app.command()
def replay(
    from_: Annotated[
        int, typer.Option("--from", min=1, help="First global log position to re-publish.")
    ],
    to: Annotated[int | None, typer.Option(help="Last position (default: the head).")] = None,
) -> None:
    """Re-publish the events from a position (for a new downstream system)."""
    from tododb.entrypoints.bootstrap import build_relay

    configure_logging()
    relay = build_relay(get_settings(), _database_url())
    try:
        sent = asyncio.run(relay.replay(from_, to))
    finally:
        relay.close()
    typer.echo(json.dumps({"republished": sent, "from": from_, "topic": relay.topic}))


@app.command()
def quarantine(
    all_: Annotated[
        bool, typer.Option("--all", help="Also the events already skipped or released.")
    ] = False,
) -> None:
    """List the events the relay could not publish, and those held behind them, as JSON."""
    from tododb.entrypoints.bootstrap import build_relay

    relay = build_relay(get_settings(), _database_url())
    try:
        relay.store.create()
        rows = relay.store.rows(everything=all_)
    finally:
        relay.close()
    typer.echo(json.dumps(rows))


_WAIT = typer.Option(help="Seconds to wait for it to be applied (it stays asked for after).")


@app.command()
def retry(todo_id: UUID, wait: Annotated[float, _WAIT] = 60.0) -> None:
    """Encode a todo's quarantined events again and publish them in order (after a fix)."""
    _resolve(todo_id, "retry", wait)


@app.command()
def skip(todo_id: UUID, wait: Annotated[float, _WAIT] = 60.0) -> None:
    """Give up a todo's quarantined event for good and publish the events held behind it."""
    _resolve(todo_id, "skip", wait)


def _resolve(todo_id: UUID, action: str, wait: float) -> None:
    """Asks the active relay (or, with none running, does it here under the relay's lock);
    exit 1 if the todo has nothing quarantined, 2 if it was not applied within ``wait``."""
    from tododb.entrypoints.bootstrap import build_relay
    from tododb.relay.service import NothingQuarantined

    configure_logging()
    relay = build_relay(get_settings(), _database_url())
    try:
        outcome = asyncio.run(relay.request(todo_id, action, wait=wait))
    except NothingQuarantined as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    finally:
        relay.close()
    typer.echo(json.dumps(outcome))
    if not outcome["applied"]:
        raise typer.Exit(2)
