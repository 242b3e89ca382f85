"""`todo relay ...`: run the relay, show its position, re-publish history."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from tododb.entrypoints.database_url import resolve_database_url
from tododb.entrypoints.log_setup import configure_logging
from tododb.infra.settings import get_settings

app = typer.Typer(help="The relay: the event log → Kafka.", no_args_is_help=True)


def _database_url() -> str:
    return resolve_database_url(get_settings(), embedded_ok=False)


@app.command()
def run() -> None:
    """Publish the event log to Kafka (stands by while another relay is active)."""
    from tododb.entrypoints.bootstrap import build_relay
    from tododb.infra.aio import run_until_signal

    configure_logging()
    relay = build_relay(get_settings(), _database_url())
    try:
        run_until_signal(relay.run)
    finally:
        relay.close()


@app.command()
def status() -> None:
    """Print the relay's position, the log's head and the lag, as JSON."""
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
