"""The `todo` command line."""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from tododb.entrypoints import consumer_cli, projections_cli, relay_cli
from tododb.entrypoints.database_url import resolve_database_url
from tododb.entrypoints.log_setup import access_log_wanted, configure_logging, uvicorn_log_config
from tododb.infra.settings import Settings, get_settings

if TYPE_CHECKING:
    import uvicorn

    from tododb.devservers.tansu import TansuBroker

app = typer.Typer(help="tododb: an event-sourced todo backend.", no_args_is_help=True)
app.add_typer(projections_cli.app, name="projections")
app.add_typer(relay_cli.app, name="relay")
app.add_typer(consumer_cli.app, name="consumer")
console = Console()
S = TypeVar("S", bound=socket.socket)


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
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes (TODO_WEB_CONCURRENCY).", min=1, max=64),
    ] = None,
) -> None:
    """Run the API against DATABASE_URL, in one process or WORKERS processes."""
    import uvicorn

    from tododb.api.metrics import shared_between_workers
    from tododb.entrypoints.bootstrap import api_from_environment, build_api
    from tododb.infra.gc_tuning import settle_after_startup

    configure_logging("api")
    settings = get_settings()
    database_url = resolve_database_url(settings, embedded_ok=False)
    count = settings.web_concurrency if workers is None else workers
    options: dict[str, Any] = {
        "host": host or settings.host,
        "port": settings.port if port is None else port,
        "log_level": "info",
        "access_log": access_log_wanted(),
        "timeout_graceful_shutdown": 5,
    }
    log_config = uvicorn_log_config()
    if log_config is not None:  # TODO_LOG_FORMAT=json: uvicorn's lines in JSON too
        options["log_config"] = log_config
    if count > 1:
        _prepare_schemas_once(settings, database_url)
    with shared_between_workers(count):  # each worker's /metrics answers for all
        if count == 1:
            api = build_api(settings, database_url)
            settle_after_startup()
            uvicorn.run(api, **options)
            return
        _serve_workers(
            f"{api_from_environment.__module__}:{api_from_environment.__name__}", count, options
        )


def _serve_workers(factory: str, count: int, options: dict[str, Any]) -> None:
    """What ``uvicorn.run(factory, factory=True, workers=count)`` does, on our socket.

    Each worker process imports and calls ``factory``; uvicorn's supervisor restarts a
    worker that dies and stops them all on SIGTERM/SIGINT.
    """
    from uvicorn import Config
    from uvicorn.supervisors import Multiprocess

    config = Config(factory, factory=True, workers=count, **options)
    Multiprocess(config, sockets=[tcp_listener(config)]).run()


def tcp_listener(config: uvicorn.Config) -> socket.socket:
    """The workers' address: bound here once, and a listening socket of its own in each
    worker process it is handed to (``WorkerListener``).

    It is made as a TCP socket (``IPPROTO_TCP``): uvicorn binds with ``proto`` 0 and
    accepted connections inherit that, while asyncio turns on TCP_NODELAY only for
    ``IPPROTO_TCP`` sockets; with Nagle left on, every keep-alive request after a
    connection's first waits ~40 ms for the client's delayed ACK (uvicorn issue #3149).
    """
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    log = logging.getLogger("uvicorn.error")
    try:
        sock = _bound(WorkerListener, family, (config.host, config.port))
    except OSError as error:  # as uvicorn's own bind: the reason, then exit 1
        log.error(error)
        raise SystemExit(1) from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    log.info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, port)
    return sock


class WorkerListener(socket.socket):
    """An address shared by the worker processes with SO_REUSEPORT, one listening socket
    per worker, so that the kernel spreads new connections evenly across them.

    With one socket shared by all, the worker that wakes first accepts every connection
    waiting (asyncio accepts up to its backlog at a time): under load one worker served
    32 keep-alive connections and the other none, and two workers did what one does.
    The parent binds this socket and never listens on it (a socket that is not
    listening gets no connections); each worker process unpickles it as a new socket
    bound to the same address, on which its server listens. A worker that dies loses
    the connections still queued on its own socket; its replacement gets a new one.
    """

    def __reduce__(self) -> tuple[Any, tuple[int, Any]]:
        return (_listener_in_worker, (self.family, self.getsockname()))


def _listener_in_worker(family: int, address: Any) -> socket.socket:
    return _bound(socket.socket, family, address)


def _bound(kind: type[S], family: int, address: Any) -> S:
    """A TCP socket of class ``kind`` bound to ``address``, sharing the port."""
    sock = kind(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _prepare_schemas_once(settings: Settings, database_url: str) -> None:
    """Create every table before the workers start, so N of them do not race on DDL.

    Each worker still runs the same ``IF NOT EXISTS`` set-up, which is then a no-op; on
    an empty database N concurrent first runs could collide on the catalogue.
    """
    from tododb.entrypoints.bootstrap import (
        build_api_services,
        build_application,
        build_read_side,
        prepare_schemas,
    )

    todo_app = build_application(settings, database_url)  # creates the event store
    try:
        read_side = build_read_side(settings, database_url)
        prepare_schemas(build_api_services(settings, todo_app, read_side), read_side)
    finally:
        todo_app.close()


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    api_url: Annotated[
        str | None,
        typer.Option(help="The API to probe (default http://TODO_HOST:TODO_PORT)."),
    ] = None,
) -> None:
    """The whole pipeline: API, each projection, the relay, each consumer group (position,
    lag in events and seconds, state, the active process)."""
    import json

    from tododb.entrypoints.bootstrap import build_read_side
    from tododb.monitoring.pipeline import pipeline_status

    settings = get_settings()
    database_url = resolve_database_url(settings, embedded_ok=False)
    url = api_url or f"http://{settings.host}:{settings.port}"
    figures = pipeline_status(
        settings, build_read_side(settings, database_url), api=_probe_api(url)
    )
    if as_json:
        typer.echo(json.dumps(figures))
        return
    _print_status(figures)


def _probe_api(url: str) -> dict[str, Any]:
    import httpx

    try:
        answer = httpx.get(f"{url.rstrip('/')}/readyz", timeout=3)
    except httpx.HTTPError as e:
        return {"state": "unreachable", "process": None, "url": url, "error": type(e).__name__}
    state = "ready" if answer.status_code == 200 else f"not ready ({answer.status_code})"
    return {"state": state, "process": None, "url": url}


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _print_status(figures: dict[str, Any]) -> None:
    from rich.table import Table

    colour = {"running": "green", "ready": "green", "stopped": "red", "rebuilding": "yellow"}

    def state(value: str) -> str:
        return f"[{colour.get(value, 'yellow')}]{value}[/]"

    table = Table(title=f"tododb pipeline (log head {figures['head']})")
    for column in ("part", "name", "position", "lag", "lag (age)", "state", "active process"):
        table.add_column(
            column, justify="right" if column.startswith(("position", "lag")) else "left"
        )
    api = figures["api"]
    table.add_row(
        "api", api.get("url") or "", "", "", "", state(api["state"]), api.get("process") or ""
    )
    for p in figures["projections"]:
        extra = f" ({p['quarantined']} quarantined)" if p["quarantined"] else ""
        table.add_row(
            "projection",
            f"{p['name']} g{p['generation']}",
            str(p["position"]),
            str(p["lag"]),
            _seconds(p["lag_seconds"]),
            state(p["state"]) + extra,
            p["active_process"] or "",
        )
    r = figures["relay"]
    extra = f" ({r['quarantined']} quarantined, {r['held']} held)" if r["quarantined"] else ""
    table.add_row(
        "relay",
        "",
        str(r["position"]),
        str(r["lag"]),
        _seconds(r["lag_seconds"]),
        state(r["state"]) + extra,
        r["active_process"] or "",
    )
    for c in figures["consumers"]:
        notes = [f"dlq {c['dlq_depth']}"] if c["dlq_depth"] else []
        notes += [f"{c['parked']} parked"] if c["parked"] else []
        notes += [c["error"]] if c["error"] else []
        table.add_row(
            "consumer",
            c["group"],
            str(c["position"]),
            "?" if c["lag"] is None else str(c["lag"]),
            _seconds(c["lag_seconds"]),
            state(c["state"]) + (f" ({', '.join(notes)})" if notes else ""),
            ", ".join(c["members"]),
        )
    console.print(table)


@app.command()
def dev(
    port: Annotated[int | None, typer.Option(help="API port (TODO_PORT).")] = None,
) -> None:
    """Start the whole system on embedded defaults; Ctrl-C stops everything."""
    from tododb.api.auth import issue_token
    from tododb.entrypoints.supervisor import ProcessSpec, Supervisor, todo_command

    configure_logging("dev")
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
    # Each worker's /metrics, /healthz, /readyz: from TODO_PROBE_PORT up, else free ports.
    first = settings.probe_port
    ports = [first + i for i in range(4)] if first else [_free_port() for _ in range(4)]
    specs = [
        ProcessSpec("api", todo_command("serve", "--port", str(api_port))),
        ProcessSpec(
            "projections", todo_command("projections", "run", "--probe-port", str(ports[0]))
        ),
        ProcessSpec("relay", todo_command("relay", "run", "--probe-port", str(ports[1]))),
        ProcessSpec(
            "notifications",
            todo_command("consumer", "notifications", "--probe-port", str(ports[2])),
        ),
        ProcessSpec(
            "analytics", todo_command("consumer", "analytics", "--probe-port", str(ports[3]))
        ),
    ]
    supervisor = Supervisor(specs, env, console)
    supervisor.start()
    url = f"http://{settings.host}:{api_port}"
    token_ = issue_token(settings.resolved_jwt_secret(), "dev-user", admin=True, ttl_seconds=86400)
    console.print(f"[bold]tododb dev[/]: API {url}  docs {url}/docs")
    console.print(
        f"[bold]worker probes[/] (/metrics, /healthz, /readyz): projections :{ports[0]}, "
        f"relay :{ports[1]}, notifications :{ports[2]}, analytics :{ports[3]}; "
        "`todo status` shows the pipeline"
    )
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_dev_broker(settings: Settings, env: dict[str, str]) -> TansuBroker | None:
    """Without KAFKA_BOOTSTRAP_SERVERS, a local Tansu for the children (no idempotence)."""
    if settings.kafka_bootstrap_servers:
        return None
    from tododb.devservers.tansu import TansuBroker

    broker = TansuBroker(log_path=settings.data_dir.resolve() / "tansu.log").start()
    env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
    env["TODO_KAFKA_IDEMPOTENCE"] = "false"  # Tansu rejects InitProducerId
    env["TODO_RELAY_REPUBLISH_ON_LOSS"] = "true"  # its memory store forgets on restart
    console.print(f"[bold]Kafka-compatible broker[/] (Tansu) at {broker.bootstrap_servers}")
    return broker


if __name__ == "__main__":
    app()
