"""CPU instructions per `POST /v1/todos`, the API's against the bare FastAPI apps'.

On these noisy 2-core machines the same code's timings swing by ±15% from run to run,
more than most changes one tries; instruction counts (valgrind's cachegrind) repeat
within ~2%. The apps (the API, and bench/http_api.py's bare ``def`` and ``async def``
apps) are driven in process, without sockets: 32 concurrent requests on
one event loop (the API against a scratch PostgreSQL database, its committer and pool
threads running as in `todo serve`). Each is counted twice, with 2 and with 12 requests
per connection, so start-up cancels out: (count of 12 - count of 2) / 320 per request.

The ratio bare ÷ ours predicted bench/http_api.py's one-worker ratio (2026-11-28: 0.93M ÷
2.31M = 0.40 against 0.39 measured), and says what a change is worth before a slow,
noisy HTTP run does. Over sockets a thread hand-off costs more than it does here (the GIL
handed over between busy threads): the API's create dropped from 1.92M to 1.64M here when
it stopped using the thread pool, and its CPU per request over HTTP by a fifth or more.
Needs valgrind (`apt-get install valgrind`); ~4 minutes.

``--tracing`` counts the API with tracing on too (every span recorded, batched to an
exporter that drops them: bench/http_api.py's ``NULL_SPANS``), for issue #13's goal (at
most 10% slower than off) without this machine's noise, and with one new trace in ten
sampled (``SAMPLED``).

    python bench/instructions.py [--tracing]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.table import Table

from bench.common import bench_database, console
from bench.http_api import BODY, SECRET, TRACING, api_env, bare_app, bare_async_app

CONNECTIONS = 32
FEW, MANY = 2, 12


def count(kind: str, per_connection: int, url: str) -> int:
    """Instructions of a whole run of ``kind`` (start-up included), from cachegrind."""
    env = api_env(url, TRACING.get(kind.removeprefix("todo-")))  # todo-on, todo-sampled
    argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
            sys.executable, __file__, "--run", kind, str(per_connection)]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from cachegrind: {done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_request(kind: str, url: str) -> float:
    if kind.startswith("todo"):
        count(kind, 1, url)  # creates the schemas, so that both counted runs find them
    few, many = count(kind, FEW, url), count(kind, MANY, url)
    return (many - few) / (CONNECTIONS * (MANY - FEW))


# ---- inside valgrind -------------------------------------------------------------------


def run(kind: str, per_connection: int) -> None:
    asyncio.run(_drive(kind, per_connection))


async def _drive(kind: str, per_connection: int) -> None:
    if kind == "bare":
        app = bare_app
    elif kind == "bare-async":
        app = bare_async_app
    else:
        from tododb.entrypoints.bootstrap import api_from_environment

        app = api_from_environment()
    from tododb.api.auth import issue_token

    body = json.dumps(BODY).encode()  # the request bench/http_api.py sends
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {issue_token(SECRET, 'bench-user')}".encode()),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    async with _lifespan(app):
        posts = (_post(app, headers, body, per_connection) for _ in range(CONNECTIONS))
        await asyncio.gather(*posts)


async def _post(app: Any, headers: list[tuple[bytes, bytes]], body: bytes, times: int) -> None:
    for _ in range(times):
        status = await _one_post(app, headers, body)
        if status != 201:
            raise RuntimeError(f"POST /v1/todos answered {status}")


async def _one_post(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> int | None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/todos", "raw_path": b"/v1/todos",
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status: int | None = None

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


class _lifespan:
    """The app's start-up and shut-down, as a server runs them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def __aenter__(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        self.task = asyncio.create_task(self.app(scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        started = await self.outbox.get()
        if started["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app did not start: {started}")

    async def __aexit__(self, *_: object) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.outbox.get()
        await self.task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--tracing", action="store_true", help="the API with tracing on too (issue #13)"
    )
    args = parser.parse_args()
    if args.run:
        run(args.run[0], int(args.run[1]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench/instructions.py needs valgrind: apt-get install valgrind")
    with bench_database() as url, ThreadPoolExecutor(2) as pool:  # one run per core
        traced_kinds = ["todo-on", "todo-sampled"] if args.tracing else []
        kinds = ["bare", "bare-async", "todo", *traced_kinds]
        bare, ceiling, ours, *traced = pool.map(lambda kind: per_request(kind, url), kinds)
    table = Table(title="POST /v1/todos in process: CPU instructions per request (cachegrind)")
    for column in ("app", "instructions/request", "bare def ÷ this", "goal (bench/http_api.py's)"):
        table.add_column(column, justify="right")
    table.add_row("bare FastAPI, def", f"{bare / 1e6:.3f}M", "1.00x", "")
    table.add_row("bare FastAPI, async def", f"{ceiling / 1e6:.3f}M", f"{bare / ceiling:.2f}x", "")
    table.add_row("tododb API", f"{ours / 1e6:.3f}M", f"{bare / ours:.2f}x", "≥ 0.50x")
    for name, on, goal in zip(
        ("on", "1 trace in 10 sampled"), traced, (", ≥ 0.90x", ""), strict=False
    ):
        table.add_row(
            f"tododb API, tracing {name}", f"{on / 1e6:.3f}M", f"{bare / on:.2f}x",
            f"off ÷ this {ours / on:.2f}x{goal}",
        )  # fmt: skip
    console().print(table)


if __name__ == "__main__":
    main()
