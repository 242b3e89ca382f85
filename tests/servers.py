"""`todo serve` as a real process for the tests that kill it or cut its database."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def serving(
    database_url: str, folder: Path, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`todo serve` on ``database_url`` with ``TODO_*`` ``settings``, logging to
    ``folder/serve.log``; its base URL and process once ready; stopped (or reaped, if
    the test killed it) at the end."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TODO_JWT_SECRET": TEST_SECRET,
        "TODO_DATA_DIR": str(folder),
        "TODO_LOG_LEVEL": "WARNING",
        **{f"TODO_{name.upper()}": value for name, value in settings.items()},
    }
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
