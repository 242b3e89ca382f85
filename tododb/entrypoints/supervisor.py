"""Run several long-lived processes as one: combined, prefixed logs; clean Ctrl-C.

`todo dev` uses this to run the API and the workers as child processes, so each one
is exactly what production runs (`todo serve`, `todo projections run`, ...).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

from tododb.infra.retry import Backoff

log = logging.getLogger(__name__)
RESTART_BACKOFF = Backoff(0.5, 30.0)

COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: Sequence[str]


class Supervisor:
    def __init__(self, specs: Sequence[ProcessSpec], env: Mapping[str, str], console: Console):
        self.specs = specs
        self.env = dict(env)
        self.console = console
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.failed: str | None = None

    def start(self) -> None:
        width = max(len(s.name) for s in self.specs)
        for i, spec in enumerate(self.specs):
            proc = subprocess.Popen(  # noqa: S603 - argv built by us
                list(spec.argv),
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
            )
            self.procs[spec.name] = proc
            label = Text(f"{spec.name:<{width}} | ", style=COLOURS[i % len(COLOURS)])
            thread = threading.Thread(target=self._pump, args=(spec.name, proc, label), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, name: str, proc: subprocess.Popen[str], label: Text) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.console.print(label + Text(line.rstrip("\n")), soft_wrap=True)
        code = proc.wait()
        if not self.stopping.is_set():
            self.failed = f"{name} exited with code {code}"
            self.stopping.set()

    def wait(self) -> None:
        """Block until Ctrl-C / SIGTERM or until a child dies."""

        def _on_signal(signum: int, _frame: object) -> None:
            self.stopping.set()

        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        while not self.stopping.wait(0.5):
            pass

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.console.print(f"[red]{name} did not stop in {timeout}s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for thread in self._threads:
            thread.join(timeout=2)


def todo_command(*args: str) -> list[str]:
    """argv for a `todo` sub-command run with this interpreter."""
    return [sys.executable, "-m", "tododb.entrypoints.cli", *args]


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent dies, so a killed worker leaves no orphans."""
    _on_parent_death(signal.SIGKILL)


def stop_with_parent_process() -> None:
    """In a process ``multiprocessing`` started (a worker of `todo serve --workers N`):
    SIGTERM, a graceful stop, once its parent dies. A parent killed with -9 would
    otherwise leave its workers serving the port, with nobody to restart or stop them,
    beside the next `todo serve` (the port is shared)."""
    parent = multiprocessing.parent_process()
    if parent is None or sys.platform != "linux":
        return
    _on_parent_death(signal.SIGTERM)
    if os.getppid() != parent.pid:  # it died before the signal was set
        raise SystemExit("the `todo serve` that started this worker is gone")


def _on_parent_death(sig: signal.Signals) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, sig)


def run_restarting(
    commands: Mapping[str, Sequence[str]],
    stop: threading.Event,
    children: dict[str, subprocess.Popen[bytes]] | None = None,
) -> None:
    """Run each named command as a child; restart any that exits, until ``stop``.

    ``todo projections run`` uses it to give each projection a process (a core and a
    GIL) of its own; children get SIGKILL if this process dies. ``children``, if given,
    is kept up to date with the running child of each command (its probes read it).
    """
    children = {} if children is None else children
    restarts: dict[str, int] = dict.fromkeys(commands, 0)

    def start(kind: str) -> None:
        children[kind] = subprocess.Popen(  # noqa: S603 - our own command
            list(commands[kind]),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    for kind in commands:
        start(kind)
    try:
        while not stop.wait(0.5):
            for kind, child in children.items():
                if child.poll() is not None:
                    log.warning("%s exited with %s; restarting", kind, child.returncode)
                    restarts[kind] += 1
                    stop.wait(RESTART_BACKOFF.delay(restarts[kind]))
                    start(kind)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
