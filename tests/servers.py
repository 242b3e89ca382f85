"""`todo serve` as a real process for the tests that kill it or cut its database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TEST_SECRET, wait_until
from tododb.entrypoints.supervisor import todo_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def process_env(database_url: str, folder: Path, **settings: str) -> dict[str, str]:
    """The environment of a tododb process a test starts: this one's, with
    ``database_url``, the tests' JWT secret, ``folder`` for its data, and ``TODO_*``
    ``settings`` (``log_level="INFO"``: ``TODO_LOG_LEVEL=INFO``)."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "TODO_JWT_SECRET": TEST_SECRET,
        "TODO_DATA_DIR": str(folder),
        **{f"TODO_{name.upper()}": value for name, value in settings.items()},
    }


def json_log_lines(log: Path) -> list[dict[str, Any]]:
    """A process's log written with ``TODO_LOG_FORMAT=json``: every line one object."""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines, f"no log lines in {log.name}"
    return [json.loads(line) for line in lines]


@contextmanager
def serving(
    database_url: str, folder: Path, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`todo serve` on ``database_url`` with ``TODO_*`` ``settings``, logging to
    ``folder/serve.log``; its base URL and process once ready; stopped (or reaped, if
    the test killed it) at the end."""
    port = free_port()
    env = process_env(database_url, folder, **{"log_level": "WARNING", **settings})
    with (folder / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            todo_command("serve", "--port", str(port)), env=env, stdout=log, stderr=log
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: ready(base), timeout=30, what="todo serve to be ready")
            yield base, proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=15)
