"""`todo projections run | rebuild NAME | status`."""

from __future__ import annotations

import signal
import threading
import time
from typing import Annotated

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

app = typer.Typer(help="Read models: run the projections, rebuild, status.", no_args_is_help=True)
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
) -> None:
    """Run the projections (a long-running worker; extra workers stand by)."""
    from tododb.entrypoints.log_setup import configure_logging
    from tododb.entrypoints.supervisor import run_restarting, todo_command
    from tododb.projections.worker import run_projection

    configure_logging()
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    read_side = _read_side()
    read_side.ensure()
    if only is None:
        # One process per projection: each gets a core (and a GIL) of its own.
        commands = {k: todo_command("projections", "run", "--only", k) for k in KINDS}
        run_restarting(commands, stop)
    elif only in KINDS:
        run_projection(read_side, only, stop)
    else:
        raise typer.BadParameter(f"unknown projection {only!r}; known: {', '.join(KINDS)}")


@app.command("rebuild")
def rebuild_command(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)}.")],
    batch_size: Annotated[int, typer.Option(min=1, max=100_000)] = 5000,
) -> None:
    """Replay the whole log into a fresh copy of NAME, then swap it in atomically."""
    from tododb.projections.rebuild import RebuildInProgress, rebuild

    if name not in KINDS:
        raise typer.BadParameter(f"unknown projection {name!r}; known: {', '.join(KINDS)}")
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
    """Each projection's position, the head of the log, lag and state."""
    from tododb.projections.status import projection_status

    read_side = _read_side()
    read_side.ensure()
    todo_app = read_side.application(pool_size=1)
    try:
        head = todo_app.head_position()
    finally:
        todo_app.close()
    table = Table(title="projections")
    for column in ("name", "generation", "position", "head", "lag", "state"):
        table.add_column(column, justify="right" if column not in ("name", "state") else "left")
    for s in projection_status(read_side, head):
        table.add_row(s.name, str(s.generation), str(s.position), str(s.head), str(s.lag), s.state)
    console.print(table)
