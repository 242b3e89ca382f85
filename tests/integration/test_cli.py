"""The `todo` command line: tokens, and `todo dev` starting and stopping the whole system."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import jwt
import psutil

from tests.conftest import wait_until
from tododb.entrypoints.supervisor import todo_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process and all its descendants: the supervisor starts each child in a
    session of its own, out of reach of ``killpg``, and a failed test must not leave the
    API, the workers and the broker running."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()


def test_token_prints_a_jwt_for_the_user(tmp_path: Path) -> None:
    env = {**os.environ, "TODO_JWT_SECRET": "cli-secret-" + "y" * 32}
    out = subprocess.run(
        todo_command("token", "alice", "--admin", "--ttl", "120"),
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    claims = jwt.decode(out, env["TODO_JWT_SECRET"], algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["admin"] is True
    assert 110 <= claims["exp"] - claims["iat"] <= 120


def test_dev_starts_everything_serves_requests_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")
    }
    env.update(TODO_DATA_DIR=str(tmp_path / "data"), TODO_PORT=str(port), COLUMNS="400")
    proc = subprocess.Popen(
        todo_command("dev"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        token = None
        for line in proc.stdout:
            lines.append(line)
            if re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", line.strip()):
                token = line.strip()
                break
        assert token, "".join(lines)
        assert f"http://127.0.0.1:{port}" in "".join(lines)
        # Keep reading the combined log, as a terminal would: a full pipe would block the
        # supervisor's writes, then every child's logging, then the API itself.
        stdout = proc.stdout
        threading.Thread(target=lambda: lines.extend(stdout), daemon=True).start()
        children = psutil.Process(proc.pid).children(recursive=True)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(ready, timeout=60, what="the dev API to be ready")
        except AssertionError as e:
            # A child's traceback can be longer than the tail: its error lines come first.
            errors = [ln for ln in lines if re.search(r"Error|Exception|exited", ln)]
            raise AssertionError(
                f"{e}; errors:\n{''.join(errors[-40:])}\nthe log's tail:\n{''.join(lines[-80:])}"
            ) from None
        auth = {"Authorization": f"Bearer {token}"}
        created = httpx.post(f"{base}/v1/todos", json={"title": "dev mode"}, headers=auth)
        assert created.status_code == 201
        seen = httpx.get(
            f"{base}/v1/todos",
            headers={"X-Min-Position": created.headers["X-Position"], **auth},
            timeout=10,
        )
        assert seen.status_code == 200, f"{seen.text}\n{''.join(lines[-120:])}"
        assert [t["title"] for t in seen.json()["items"]] == ["dev mode"]
        postmaster = int((tmp_path / "data" / "pgdata" / "postmaster.pid").read_text().split()[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        gone = psutil.wait_procs(children, timeout=30)[1]
        assert gone == [], f"left running: {gone}"
        wait_until(lambda: not psutil.pid_exists(postmaster), what="embedded PostgreSQL to stop")
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    # the data folder survives for the next start
    assert (tmp_path / "data" / "pgdata" / "PG_VERSION").exists()
