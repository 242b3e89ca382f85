"""POST /v1/todos through `todo serve`, beside a bare FastAPI app under the same load.

    python bench/http_api.py [--seconds 10] [--connections 32] [--workers 1 2] [--load wrk|httpx]
                              [--tracing [--rounds N]]

For each worker count: `todo serve --workers N` (a subprocess on a scratch embedded
database, ``TODO_RATE_LIMIT_ENABLED=false``), and two bare apps, which parse the same
JSON body into a model of the same fields and answer 201, nothing else, served by uvicorn
with the same worker count and options, their collector tuned the same way:
``bare_app``, a sync endpoint (``def``, run on the thread pool: the baseline of issue
#10, as the API's create was when it was filed), and ``bare_async_app``, the same
endpoint as ``async def`` (no thread at all: what the API's create now is, on its fast
path; a ceiling no endpoint that writes to a database reaches). All get a warm-up, then
the same load: Debian's ``wrk`` (one thread, a Lua script for the POST
with its JSON body and Authorization header) or, without wrk, an async httpx client in a
process of its own (a Python load generator: on 2 cores it saturates before the servers
do, so its ratios say little; install wrk: ``apt-get install wrk``). Closed loop: each
connection sends its next request when the last one is answered. Prints req/s,
p50/p99/max, the CPU per request of the server's processes and of PostgreSQL's, and
todo serve ÷ each bare app. Goal (issue #10): >= 0.5x the bare app with the same worker
count, p99 < 50 ms at 32 connections.

``--tracing [--rounds N]`` (issue #13): tracing off, on, and on with one trace in ten
sampled, timed in rounds (``tracing_rows``), and OTLP to a local collector.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from rich.table import Table
from uvicorn.supervisors import Multiprocess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database, console, pct
from tododb.api.auth import issue_token
from tododb.entrypoints.cli import tcp_listener
from tododb.entrypoints.log_setup import access_log_wanted
from tododb.entrypoints.supervisor import todo_command
from tododb.infra.gc_tuning import settle_after_startup

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-http-" + "x" * 32
BODY = {
    "title": "benchmark todo",
    "description": "posted by bench/http_api.py",
    "priority": "high",
    "tags": ["bench", "http"],
}


class BareTodo(BaseModel):
    """The fields of the API's create body, without its rules."""

    title: str
    description: str = ""
    due: datetime | None = None
    priority: str = "normal"
    tags: list[str] = []


bare_app = FastAPI()


@bare_app.post("/v1/todos", status_code=201)
def bare_create(body: BareTodo) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), **body.model_dump(mode="json")}


@bare_app.get("/readyz")
def bare_ready() -> dict[str, str]:
    return {"status": "ok"}


bare_async_app = FastAPI()


@bare_async_app.post("/v1/todos", status_code=201)
async def bare_async_create(body: BareTodo) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), **body.model_dump(mode="json")}


bare_async_app.get("/readyz")(bare_ready)
BARE_APPS = {"def": bare_app, "async": bare_async_app}


def bare_factory() -> FastAPI:
    """The bare app (``TODO_BENCH_BARE``: def or async) with the collector tuned as `todo
    serve` tunes its own (``gc_tuning``): a runtime setting any app could use, so the
    ratio compares the code, not it."""
    settle_after_startup()
    return BARE_APPS[os.environ.get("TODO_BENCH_BARE", "def")]


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    bad: int
    """Answers other than 2xx, and socket errors or timeouts."""
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu: float = 0.0
    """CPU seconds of the server's processes (parent and workers) during the run."""
    db_cpu: float = 0.0
    """CPU seconds of the machine's PostgreSQL processes during the run."""
    batch: float | None = None
    """`todo serve`'s commands per group-commit batch during the run (its ``/metrics``):
    the fewer, the more transactions, and CPU, a request costs."""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def per_request_us(self, cpu_seconds: float) -> float:
        return cpu_seconds / self.requests * 1e6 if self.requests else 0.0


@dataclass(frozen=True)
class Served:
    """A running server: its base URL and its parent process."""

    url: str
    pid: int


def cpu_seconds(root: int | None = None, name: str | None = None) -> float:
    """CPU (user + system) of process ``root`` and its descendants, or of every process
    called ``name``, from /proc. Throughput swings with this machine's load; CPU per
    request swings much less, and says where a request's time goes."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        pid, rest = int(entry), stat[stat.rindex(")") + 2 :].split()
        names[pid] = stat[stat.index("(") + 1 : stat.rindex(")")]
        parents[pid] = int(rest[1])
        used[pid] = (int(rest[11]) + int(rest[12])) / tick
    if name is not None:
        return sum(used[pid] for pid, comm in names.items() if comm == name)
    tree = {root}
    for _ in range(4):  # parent, workers, their helpers
        tree |= {pid for pid, parent in parents.items() if parent in tree}
    return sum(used.get(pid, 0.0) for pid in tree)


# ---- servers ---------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(argv: list[str], env: dict[str, str], workers: int, port: int) -> Iterator[Served]:
    """A server subprocess on ``port``, once every worker has started."""
    log_path = Path(tempfile.mkdtemp(prefix="tododb-bench-http-")) / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while log_path.read_text().count("Application startup complete.") < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield Served(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(log_path.parent, ignore_errors=True)


LOG_LEVEL = "WARNING"
"""Of every benchmarked server, ours and the bare apps alike (no access line a request)."""


def api_env(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a benchmarked API process: ``url``'s database, ``SECRET``, no
    rate limits (the load would hit them), a data directory of its own."""
    return {
        **os.environ,
        **(extra or {}),
        "DATABASE_URL": url,
        "TODO_JWT_SECRET": SECRET,
        "TODO_RATE_LIMIT_ENABLED": "false",
        "TODO_LOG_LEVEL": LOG_LEVEL,
        "TODO_DATA_DIR": tempfile.mkdtemp(prefix="tododb-bench-api-data-"),
    }


def todo_serve(url: str, workers: int, tracing: dict[str, str] | None = None) -> Any:
    env = api_env(url, tracing)
    port = free_port()
    argv = todo_command("serve", "--port", str(port), "--workers", str(workers))
    return server(argv, env, workers, port)


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that accepts every export and keeps nothing."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def otlp_sink() -> Iterator[str]:
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sink.server_address[1]}"
    finally:
        sink.shutdown()


def bare(workers: int, style: str = "def") -> Any:
    """A bare app (``BARE_APPS[style]``) in a process of its own, served as `todo serve`
    serves the API."""
    port = free_port()
    argv = [sys.executable, __file__, "--serve-bare", str(port), "--workers", str(workers)]
    env = {**os.environ, "TODO_BENCH_BARE": style, "TODO_LOG_LEVEL": LOG_LEVEL}
    return server(argv, env, workers, port)


def serve_bare(port: int, workers: int) -> None:
    """uvicorn with `todo serve`'s options; several workers on the same kind of socket
    (uvicorn's own ``--workers`` socket would leave Nagle on, see ``tcp_listener``)."""
    options: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "log_level": "info", "timeout_graceful_shutdown": 5,
        "access_log": access_log_wanted(),  # as `todo serve` at the same TODO_LOG_LEVEL
    }  # fmt: skip
    if workers == 1:
        uvicorn.run("bench.http_api:bare_factory", factory=True, **options)
        return
    config = uvicorn.Config("bench.http_api:bare_factory", factory=True, workers=workers, **options)
    Multiprocess(config, sockets=[tcp_listener(config)]).run()


# ---- load generators -------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk(base: str, token: str, connections: int, seconds: float) -> Load:
    """Debian's wrk, one thread (the other core is the servers')."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(body=json.dumps(BODY), token=token))
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
             "-s", script.name, f"{base}/v1/todos"],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    requests, duration_us, bad, p50, p99, high = map(int, line.split()[1:])
    return Load(requests, duration_us / 1e6, bad, p50 / 1e3, p99 / 1e3, high / 1e3)


def httpx_load(base: str, token: str, connections: int, seconds: float) -> Load:
    """Without wrk: ``connections`` httpx tasks in a process of their own."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(_httpx_main, base, token, connections, seconds).result()


def _httpx_main(base: str, token: str, connections: int, seconds: float) -> Load:
    return asyncio.run(_httpx_run(base, token, connections, seconds))


async def _httpx_run(base: str, token: str, connections: int, seconds: float) -> Load:
    latencies: list[float] = []
    bad = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, limits=limits, headers=headers) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def one_connection() -> None:
            nonlocal bad
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    response = await client.post("/v1/todos", json=BODY, timeout=10)
                    bad += not response.is_success
                except httpx.HTTPError:
                    bad += 1
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(one_connection() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    ms = [x * 1e3 for x in latencies]
    return Load(len(ms), elapsed, bad, pct(ms, 50), pct(ms, 99), max(ms))


# ---- the run ---------------------------------------------------------------------------


def measure(served: Served, load: Any, connections: int, seconds: float) -> Load:
    """A warm-up, then the timed load, with the CPU the server and the database used."""
    token = issue_token(SECRET, "bench-user", ttl_seconds=3600)
    load(served.url, token, connections, min(2.0, seconds))  # warm-up: pools, caches, threads
    server, db = cpu_seconds(served.pid), cpu_seconds(name="postgres")
    sums = append_sums(served.url)
    result: Load = load(served.url, token, connections, seconds)
    server_cpu, db_cpu = cpu_seconds(served.pid) - server, cpu_seconds(name="postgres") - db
    after = append_sums(served.url)
    batches = after[1] - sums[1] if sums and after else 0
    return replace(
        result,
        server_cpu=server_cpu,
        db_cpu=db_cpu,
        batch=(after[0] - sums[0]) / batches if sums and after and batches else None,
    )


def append_sums(url: str) -> tuple[float, float] | None:
    """`todo serve`'s commands and batches so far (from ``/metrics``; with several workers
    as of their last publish, under a second old), or None from a bare app."""
    answer = httpx.get(f"{url}/metrics/", timeout=10)
    if answer.status_code != 200:
        return None
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }
    commands, batches = "tododb_append_commands_total", "tododb_append_batches_total"
    if commands not in found or batches not in found:
        return None
    return found[commands], found[batches]


def together(first: Load, second: Load) -> Load:
    """Two runs as one: their requests over their time, p50 the mean, p99 and max the
    worse."""
    return Load(
        first.requests + second.requests,
        first.seconds + second.seconds,
        first.bad + second.bad,
        (first.p50_ms + second.p50_ms) / 2,
        max(first.p99_ms, second.p99_ms),
        max(first.max_ms, second.max_ms),
        first.server_cpu + second.server_cpu,
        first.db_cpu + second.db_cpu,
        None if first.batch is None or second.batch is None else (first.batch + second.batch) / 2,
    )


NULL_SPANS = {"PYTHONPATH": os.pathsep.join([str(ROOT / "bench" / "null_spans"), str(ROOT)])}
"""`todo serve` with the SDK on and a batch processor feeding ``NullExporter``."""


SAMPLED = {
    **NULL_SPANS,
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.1",
}
"""As ``NULL_SPANS``, one new trace in ten recorded (the SDK's standard variables)."""
TRACING = {"off": {"OTEL_SDK_DISABLED": "true"}, "on": NULL_SPANS, "sampled": SAMPLED}


def tracing_rows(
    url: str, workers: int, load: Any, connections: int, seconds: float, rounds: int = 1
) -> list[tuple[str, Load, str]]:
    """Issue #13: tracing off; on (the SDK's spans batched to an in-process exporter that
    drops them: the goal); on with one trace in ten sampled; and exported with OTLP/HTTP
    to a collector that is a Python process on the same two cores (its CPU is the
    servers' too: an upper bound).

    Off, on and sampled are timed off, on, sampled, sampled, on, off, ``rounds`` times,
    each run with a server of its own: this machine's speed drifts by more than the 10%
    measured. The rows are all runs together; the goal column adds each round's ratio to
    off, whose spread says how far one round can be trusted, and the CPU per request
    tracing adds."""
    runs: dict[str, list[Load]] = {kind: [] for kind in TRACING}
    ratios: dict[str, list[tuple[float, float]]] = {"on": [], "sampled": []}
    for _ in range(rounds):
        for kind in ("off", "on", "sampled", "sampled", "on", "off"):
            with todo_serve(url, workers, TRACING[kind]) as served:
                runs[kind].append(measure(served, load, connections, seconds))
        off = together(*runs["off"][-2:])
        for kind, found in ratios.items():
            this = together(*runs[kind][-2:])
            found.append((this.rate / off.rate, cpu_per_request(this) / cpu_per_request(off)))
    total = {kind: combined(loads) for kind, loads in runs.items()}
    with (
        otlp_sink() as sink,
        todo_serve(url, workers, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink}) as served,
    ):
        otlp = measure(served, load, connections, seconds)
    return [
        ("todo serve, tracing off", total["off"], ""),
        (
            "tracing on (SDK, null exporter)",
            total["on"],
            f"{_of_off(total, 'on', ratios)}, ≥ 0.90x",
        ),
        ("on, 1 trace in 10 sampled", total["sampled"], _of_off(total, "sampled", ratios)),
        ("OTLP to a local collector", otlp, f"{otlp.rate / total['off'].rate:.2f}x of off"),
    ]


def _of_off(total: dict[str, Load], kind: str, ratios: dict[str, list[tuple[float, float]]]) -> str:
    """``kind``'s req/s ÷ off's, and the CPU per request it adds, with each round's."""
    rates = _rounds([rate for rate, _ in ratios[kind]])
    cpus = _rounds([cpu for _, cpu in ratios[kind]])
    extra = cpu_per_request(total[kind]) / cpu_per_request(total["off"]) - 1
    return f"{total[kind].rate / total['off'].rate:.2f}x of off{rates}; CPU/req {extra:+.1%}{cpus}"


def cpu_per_request(load: Load) -> float:
    """Server and database CPU per request: what tracing adds to a request's cost."""
    return load.per_request_us(load.server_cpu + load.db_cpu)


def _rounds(ratios: list[float]) -> str:
    return f" (rounds: {', '.join(f'{r:.2f}' for r in sorted(ratios))})" if len(ratios) > 1 else ""


def combined(loads: list[Load]) -> Load:
    result = loads[0]
    for load in loads[1:]:
        result = together(result, load)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--load", choices=("wrk", "httpx"), default=None)
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also todo serve with tracing off, on (SDK, null exporter) and exporting OTLP "
        "to a local collector (issue #13: tracing on must cost at most 10%%)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --tracing: time off, on, sampled, sampled, on, off this many times (each "
        "round's ratio is shown too)",
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare, args.workers[0])
        return
    kind = args.load or ("wrk" if shutil.which("wrk") else "httpx")
    load = wrk if kind == "wrk" else httpx_load
    out = console()
    table = Table(
        title=f"POST /v1/todos, {args.connections} connections, {args.seconds:g} s each, "
        f"load: {kind} (same machine, same run)"
    )
    for col in (
        "workers",
        "server",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "not 2xx",
        "CPU µs/req",
        "db CPU µs/req",
        "cmds/batch",
        "÷ bare def",
        "÷ bare async",
        "goal",
    ):
        table.add_column(col, justify="right")
    with bench_database() as url:
        for workers in args.workers:
            with bare(workers) as served:
                baseline = measure(served, load, args.connections, args.seconds)
            with bare(workers, "async") as served:
                ceiling = measure(served, load, args.connections, args.seconds)
            with todo_serve(url, workers) as served:
                ours = measure(served, load, args.connections, args.seconds)
            rows = [
                ("bare def", baseline, ""),
                ("bare async def", ceiling, ""),
                ("todo serve", ours, "≥ 0.50x bare def, p99 < 50 ms"),
            ]
            if args.tracing:
                rows += tracing_rows(
                    url, workers, load, args.connections, args.seconds, args.rounds
                )
            for name, result, goal in rows:
                table.add_row(
                    str(workers), name, f"{result.rate:,.0f}", f"{result.p50_ms:.1f}",
                    f"{result.p99_ms:.1f}", f"{result.max_ms:.1f}", str(result.bad),
                    f"{result.per_request_us(result.server_cpu):,.0f}",
                    f"{result.per_request_us(result.db_cpu):,.0f}",
                    "" if result.batch is None else f"{result.batch:.1f}",
                    f"{result.rate / baseline.rate:.2f}x", f"{result.rate / ceiling.rate:.2f}x",
                    goal,
                )  # fmt: skip
    out.print(table)


if __name__ == "__main__":
    main()
