"""`todo projections run | rebuild NAME | status | quarantine NAME | retry|skip NAME TODO_ID`."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tododb.projections.registry import KINDS, ReadSide

if TYPE_CHECKING:
    from tododb.projections.admin import ProjectionsAdmin, Resolution

app = typer.Typer(
    help="Read models: run the projections, rebuild, status, quarantine.", no_args_is_help=True
)
console = Console()


def _read_side() -> ReadSide:
    from tododb.entrypoints.bootstrap import build_read_side
    from tododb.entrypoints.database_url import resolve_database_url
    from tododb.infra.settings import get_settings

    settings = get_settings()
    return build_read_side(settings, resolve_database_url(settings, embedded_ok=False))


@app.command("run")
def run(
    only: Annotated[
        str | None, typer.Option(help="Run just this projection (default: each in a process).")
    ] = None,
    probe_port: Annotated[
        int | None,
        typer.Option(help="Port of /metrics, /healthz, /readyz (TODO_PROBE_PORT; 0: none)."),
    ] = None,
) -> None:
    """Run the projections (a long-running worker; extra workers stand by)."""
    import subprocess

    from tododb.entrypoints.log_setup import configure_logging
    from tododb.entrypoints.supervisor import run_restarting, todo_command
    from tododb.infra.gc_tuning import settle_after_startup
    from tododb.infra.settings import get_settings
    from tododb.monitoring.workers import projection_probes, this_process
    from tododb.projections.worker import run_projection

    configure_logging("projections")
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if only is not None and only not in KINDS:
        raise typer.BadParameter(f"unknown projection {only!r}; known: {', '.join(KINDS)}")
    settings = get_settings()
    if probe_port is not None:
        settings = settings.model_copy(update={"probe_port": probe_port})
    read_side = _read_side()
    read_side.ensure()
    children: dict[str, subprocess.Popen[bytes]] = {}

    def processes() -> set[str]:
        if only is not None:
            return {this_process()}
        return {this_process(child.pid) for child in list(children.values())}

    kinds = KINDS if only is None else (only,)
    probes = projection_probes(settings, read_side, kinds, processes)
    if settings.probe_port:
        probes.start()
    try:
        if only is None:
            # One process per projection: each gets a core (and a GIL) of its own; this
            # process answers the probes for all of them.
            commands = {
                k: todo_command("projections", "run", "--only", k, "--probe-port", "0")
                for k in KINDS
            }
            run_restarting(commands, stop, children)
        else:
            settle_after_startup()
            run_projection(read_side, only, stop)
    finally:
        probes.stop()


@app.command("rebuild")
def rebuild_command(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)}.")],
    batch_size: Annotated[int, typer.Option(min=1, max=100_000)] = 5000,
) -> None:
    """Replay the whole log into a fresh copy of NAME, then swap it in atomically."""
    from tododb.projections.rebuild import RebuildInProgress, rebuild

    _check(name)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>10} events/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"rebuilding {name}", total=None, rate="-")

        def on_progress(position: int, head: int) -> None:
            elapsed = time.perf_counter() - started
            progress.update(
                task,
                completed=position,
                total=head,
                rate=f"{position / elapsed:,.0f}" if elapsed else "-",
            )

        try:
            result = rebuild(_read_side(), name, progress=on_progress, batch_size=batch_size)
        except RebuildInProgress as e:
            console.print(f"[red]{e}")
            raise typer.Exit(1) from None
    console.print(
        f"{name}: generation {result.generation} is live at position {result.position} "
        f"({result.events:,} events in {result.seconds:.1f}s, {result.events_per_second:,.0f}/s)"
    )


@app.command("status")
def status() -> None:
    """Each projection's position, the head of the log, lag, state and quarantined todos."""
    columns = ("name", "generation", "position", "head", "lag", "state", "quarantined")
    table = Table(title="projections")
    for column in columns:
        table.add_column(column, justify="left" if column in ("name", "state") else "right")
    for s in _admin().status():
        table.add_row(*(str(getattr(s, column)) for column in columns))
    console.print(table)


@app.command("quarantine")
def quarantine(name: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)}.")]) -> None:
    """The todos whose events NAME has quarantined: the failed event, why, how many held."""
    _check(name)
    table = Table(title=f"{name}: quarantined todos")
    for column in ("todo", "version", "position", "topic", "held", "error"):
        table.add_column(column, overflow="fold")
    for t in _admin().quarantine(name):
        row = (t.todo_id, t.version, t.position, t.topic, t.held, t.error)
        table.add_row(*(str(v) for v in row))
    console.print(table)


@app.command("retry")
def retry(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)}.")],
    todo_id: Annotated[UUID, typer.Argument(help="The quarantined todo.")],
) -> None:
    """Apply TODO_ID's quarantined events again, after a fix."""
    _check(name)
    _report(lambda admin: admin.retry(name, todo_id))


@app.command("skip")
def skip(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)}.")],
    todo_id: Annotated[UUID, typer.Argument(help="The quarantined todo.")],
) -> None:
    """Record TODO_ID's failing event as skipped, then apply the events held behind it."""
    _check(name)
    _report(lambda admin: admin.skip(name, todo_id))


def _admin() -> ProjectionsAdmin:
    """The admin API's facade, on this command's database."""
    from tododb.projections.admin import ProjectionsAdmin

    read_side = _read_side()
    read_side.ensure()

    def head() -> int:
        todo_app = read_side.application(pool_size=1)
        try:
            return todo_app.head_position()
        finally:
            todo_app.close()

    return ProjectionsAdmin(read_side, head)


def _check(name: str) -> None:
    if name not in KINDS:
        raise typer.BadParameter(f"unknown projection {name!r}; known: {', '.join(KINDS)}")


def _report(action: Callable[[ProjectionsAdmin], Resolution]) -> None:
    """Run a retry or skip; exit 1 if there was nothing to do, 2 if an event failed again."""
    from tododb.projections.admin import NothingToResolve, NotQuarantined

    try:
        done = action(_admin())
    except (NotQuarantined, NothingToResolve) as e:
        console.print(f"[red]{e}")
        raise typer.Exit(1) from None
    console.print(f"{done.todo_id}: {done.applied} events applied")
    if done.quarantined is None:
        console.print("released")
        return
    head = done.quarantined
    console.print(
        f"[red]still quarantined at version {head.version} (position {head.position}, "
        f"{head.held} held): {head.error}"
    )
    raise typer.Exit(2)
