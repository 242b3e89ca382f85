"""The `todo` command line."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from tododb.settings import Settings, get_settings

if TYPE_CHECKING:
    from tododb.broker import TansuBroker

app = typer.Typer(help="tododb: an event-sourced todo backend.", no_args_is_help=True)
console = Console()


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("TODO_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def token(
    user: Annotated[str, typer.Argument(help="User id (the token's `sub`).")],
    admin: Annotated[bool, typer.Option("--admin", help="Add the admin claim.")] = False,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.", min=1)] = 3600,
) -> None:
    """Print a bearer token for USER."""
    from tododb.api.auth import issue_token

    typer.echo(
        issue_token(get_settings().resolved_jwt_secret(), user, admin=admin, ttl_seconds=ttl)
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (TODO_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (TODO_PORT).")] = None,
) -> None:
    """Run the API against DATABASE_URL."""
    import uvicorn

    from tododb.api.app import create_app
    from tododb.bootstrap import build_application, build_read_side, resolve_database_url

    configure_logging()
    settings = get_settings()
    url = resolve_database_url(settings, embedded_ok=False)
    api = create_app(settings, build_application(settings, url), build_read_side(settings, url))
    uvicorn.run(
        api,
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_level="info",
        timeout_graceful_shutdown=5,
    )


@app.command()
def dev(
    port: Annotated[int | None, typer.Option(help="API port (TODO_PORT).")] = None,
) -> None:
    """Start the whole system on embedded defaults; Ctrl-C stops everything."""
    from tododb.api.auth import issue_token
    from tododb.bootstrap import resolve_database_url
    from tododb.supervisor import ProcessSpec, Supervisor, todo_command

    configure_logging()
    settings = get_settings()
    database_url = resolve_database_url(settings, embedded_ok=True)
    api_port = settings.port if port is None else port
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url
    env["TODO_DATA_DIR"] = str(settings.data_dir.resolve())
    env["TODO_JWT_SECRET"] = settings.resolved_jwt_secret()
    # On a laptop, webhooks to a local receiver are the point; never in production.
    env.setdefault("TODO_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
    broker = _start_dev_broker(settings, env)
    specs = [
        ProcessSpec("api", todo_command("serve", "--port", str(api_port))),
        ProcessSpec("projections", todo_command("projections", "run")),
        ProcessSpec("relay", todo_command("relay", "run")),
        ProcessSpec("notifications", todo_command("consumer", "notifications")),
        ProcessSpec("analytics", todo_command("consumer", "analytics")),
    ]
    supervisor = Supervisor(specs, env, console)
    supervisor.start()
    url = f"http://{settings.host}:{api_port}"
    token_ = issue_token(settings.resolved_jwt_secret(), "dev-user", admin=True, ttl_seconds=86400)
    console.print(f"[bold]tododb dev[/]: API {url}  docs {url}/docs")
    console.print(f"[bold]dev token[/] (user dev-user, admin, 24h):\n{token_}")
    console.print("Ctrl-C stops everything.")
    try:
        supervisor.wait()
    finally:
        supervisor.stop()
        if broker is not None:
            broker.stop(kill=True)  # after its clients; its memory store holds nothing to keep
        if supervisor.failed:
            console.print(f"[red]{supervisor.failed}")
        console.print("stopped.")
    if supervisor.failed:
        raise typer.Exit(1)


def _start_dev_broker(settings: Settings, env: dict[str, str]) -> TansuBroker | None:
    """Without KAFKA_BOOTSTRAP_SERVERS, a local Tansu for the children (no idempotence)."""
    if settings.kafka_bootstrap_servers:
        return None
    from tododb.broker import TansuBroker

    broker = TansuBroker(log_path=settings.data_dir.resolve() / "tansu.log").start()
    env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
    env["TODO_KAFKA_IDEMPOTENCE"] = "false"  # Tansu rejects InitProducerId
    console.print(f"[bold]Kafka-compatible broker[/] (Tansu) at {broker.bootstrap_servers}")
    return broker


def _register_sub_commands() -> None:
    from tododb.projections.cli import app as projections_app

    app.add_typer(projections_app, name="projections")
    from tododb.relay.cli import app as relay_app

    app.add_typer(relay_app, name="relay")
    from tododb.consumers.cli import app as consumer_app

    app.add_typer(consumer_app, name="consumer")


_register_sub_commands()


if __name__ == "__main__":
    app()
