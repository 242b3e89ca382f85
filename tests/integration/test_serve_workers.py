"""`todo serve --workers N`: N uvicorn worker processes, each with its own application,
all serving one port, and a SIGTERM that stops them all cleanly."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_SECRET, wait_until
from tests.integration.test_cli import free_port
from tododb.api.auth import issue_token
from tododb.api.metrics import SHARED_DIR_VARIABLE
from tododb.entrypoints.cli import tcp_listener
from tododb.entrypoints.supervisor import todo_command

pytestmark = pytest.mark.integration

WORKERS = 2


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    base: str
    port: int
    log: Path

    def workers(self) -> list[psutil.Process]:
        """uvicorn's worker processes (multiprocessing's resource tracker left out)."""
        return [
            child
            for child in psutil.Process(self.proc.pid).children()
            if "spawn_main" in " ".join(child.cmdline())
        ]

    def metrics_dir(self) -> Path:
        """The directory `todo serve` made for its workers' metrics (in their environment)."""
        made = {Path(worker.environ()[SHARED_DIR_VARIABLE]) for worker in self.workers()}
        assert len(made) == 1, made
        return made.pop()


@pytest.fixture
def served(fresh_database_url: str, tmp_path: Path) -> Iterator[Served]:
    """`todo serve --workers 2` in a process of its own, on an empty database."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != SHARED_DIR_VARIABLE},
        "TMPDIR": str(tmp_path),  # the metrics directory todo serve makes, and its orphans
        "DATABASE_URL": fresh_database_url,
        "TODO_JWT_SECRET": TEST_SECRET,
        "TODO_DATA_DIR": str(tmp_path),
        "TODO_LOG_LEVEL": "WARNING",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            todo_command("serve", "--port", str(port), "--workers", str(WORKERS)),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(proc, f"http://127.0.0.1:{port}", port, log_path)
    try:
        wait_until(lambda: _ready(served), timeout=60, what="both workers to be ready")
        yield served
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ready(served: Served) -> bool:
    """Both workers listen on the port. uvicorn logs "Application startup complete."
    before its server listens: waiting for the log alone left a moment in which one
    worker's socket took every connection (a burst test failed so, once in CI)."""
    try:
        workers = served.workers()
        return len(workers) == WORKERS and all(_listens(worker, served.port) for worker in workers)
    except psutil.Error:  # a worker exiting or being replaced meanwhile
        return False


def _listens(worker: psutil.Process, port: int) -> bool:
    return any(
        conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
        for conn in worker.net_connections(kind="tcp")
    )


def _server_pid(served: Served, client_port: int) -> int | None:
    """The worker holding the server end of the client's connection from ``client_port``."""
    for worker in served.workers():
        for conn in worker.net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == client_port and conn.laddr.port == served.port:
                return worker.pid
    return None


class Connection:
    """One keep-alive HTTP connection whose local port is known (to find its worker)."""

    def __init__(self, served: Served, headers: dict[str, str]) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        self.http.connect()
        self.local_port: int = self.http.sock.getsockname()[1]
        self.headers = {**headers, "Content-Type": "application/json"}

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body)
        self.http.request(method, path, body=payload, headers=self.headers)
        response = self.http.getresponse()
        return response.status, json.loads(response.read() or b"null")

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics as the worker on this connection answers it."""
        self.http.request("GET", "/metrics/")
        response = self.http.getresponse()
        text = response.read().decode()
        assert response.status == 200, text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def _connections_on_every_worker(served: Served, headers: dict[str, str]) -> list[Connection]:
    """Keep-alive connections, opened until every worker has accepted at least one.

    The kernel spreads new connections across the workers' sockets by a hash of their
    addresses, so where one lands is chance; the loop is bounded.
    """
    connections: list[Connection] = []
    serving: set[int] = set()
    while len(serving) < WORKERS and len(connections) < 200:
        conn = Connection(served, headers)
        connections.append(conn)
        status, _ = conn.request("POST", "/v1/todos", {"title": f"opening {len(connections)}"})
        assert status == 201
        pid = _server_pid(served, conn.local_port)
        if pid is not None:
            serving.add(pid)
    assert len(serving) == WORKERS, f"only workers {serving} accepted connections"
    return connections


def test_the_workers_socket_keeps_nagle_off() -> None:
    """Connections accepted on the socket handed to the workers get TCP_NODELAY, as in the
    one-process path: with Nagle on, each keep-alive request after a connection's first
    waits ~40 ms for a delayed ACK (uvicorn binds that socket with ``proto`` 0)."""
    listener = tcp_listener(uvicorn.Config("unused:app", host="127.0.0.1", port=0))
    assert listener.proto == socket.IPPROTO_TCP

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Probe, sock=listener)
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0


def test_two_workers_serve_the_port_and_sigterm_stops_them_all(served: Served) -> None:
    workers = served.workers()
    assert len(workers) == WORKERS, [w.cmdline() for w in workers]
    headers = {"Authorization": f"Bearer {issue_token(TEST_SECRET, 'alice')}"}
    connections = _connections_on_every_worker(served, headers)

    def post_share(n: int) -> list[tuple[int, Any]]:
        """Connection n's share of the 50 POSTs (a connection is used by one thread)."""
        conn = connections[n]
        return [
            conn.request("POST", "/v1/todos", {"title": f"todo {i}"})
            for i in range(n, 50, len(connections))
        ]

    with ThreadPoolExecutor(len(connections)) as pool:
        answers = [a for share in pool.map(post_share, range(len(connections))) for a in share]
    assert [status for status, _ in answers] == [201] * 50
    ids = {body["id"] for _, body in answers}
    assert len(ids) == 50
    for todo_id in list(ids)[:5]:  # stored: the event store itself answers
        status, events = connections[0].request("GET", f"/v1/todos/{todo_id}/events")
        assert status == 200
        assert [e["type"] for e in events] == ["todos.task.created"]
    for conn in connections:
        conn.http.close()
    metrics_dir = served.metrics_dir()
    assert any(metrics_dir.glob("counter_*.db"))

    everything = [psutil.Process(served.proc.pid), *psutil.Process(served.proc.pid).children()]
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0
    assert not metrics_dir.exists()  # todo serve made it, and removed it
    _, alive = psutil.wait_procs(everything, timeout=15)
    assert alive == [], f"left running: {alive}"
    log = served.log.read_text()
    assert log.count("Finished server process") == WORKERS, log
    assert "Traceback" not in log, log
    assert '"POST /v1/todos HTTP/1.1" 201' not in log, log  # WARNING: no access lines


def test_a_burst_of_connections_is_spread_across_the_workers(served: Served) -> None:
    """32 connections opened at once (as a load balancer or wrk does): each worker has a
    socket of its own, so the kernel spreads them. On one shared socket the first worker
    to wake accepted every waiting connection, and served all 32 while the other idled."""
    headers = {"Authorization": f"Bearer {issue_token(TEST_SECRET, 'burst')}"}
    connections = [
        http.client.HTTPConnection("127.0.0.1", served.port, timeout=30) for _ in range(32)
    ]
    for conn in connections:
        conn.connect()
    try:
        per_worker: dict[int | None, int] = {}
        for conn in connections:
            conn.request("GET", "/v1/todos?limit=1", headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            pid = _server_pid(served, conn.sock.getsockname()[1])
            per_worker[pid] = per_worker.get(pid, 0) + 1
    finally:
        for conn in connections:
            conn.close()
    assert None not in per_worker, per_worker
    assert len(per_worker) == WORKERS, per_worker
    assert min(per_worker.values()) >= 4, per_worker  # binomial(32, 1/2): below 4 ~1e-6


CREATED = (
    "tododb_http_requests_total",
    (("method", "POST"), ("route", "/v1/todos"), ("status", "201")),
)
APPENDED = ("tododb_append_commands_total", ())
QUEUED = ("tododb_append_queued_commands", ())


def _every_worker_counts(connections: list[Connection], served: Served, total: int) -> bool:
    """Each worker's scrape counts ``total`` creates, requests and appended commands
    both (a worker copies its group commit's sums into the shared files once a second)."""
    answered: set[int | None] = set()
    for conn in connections:
        samples = conn.scrape()
        if samples.get(CREATED) != total or samples.get(APPENDED) != total:
            return False
        assert samples.get(QUEUED) == 0, samples.get(QUEUED)
        answered.add(_server_pid(served, conn.local_port))
    assert len(answered) == WORKERS, answered
    return True


def test_a_scrape_of_any_worker_counts_every_worker(served: Served) -> None:
    """With N workers, /metrics answers for all of them, whichever worker a scrape
    reaches: Prometheus behind one port would otherwise read one worker's counters, then
    another's, and see them go down. A worker killed (-9) keeps its counts; its
    replacement drops its figures of the moment."""
    headers = {"Authorization": f"Bearer {issue_token(TEST_SECRET, 'metrics')}"}
    connections = _connections_on_every_worker(served, headers)
    for i in range(20):
        status, _ = connections[i % len(connections)].request(
            "POST", "/v1/todos", {"title": f"counted {i}"}
        )
        assert status == 201
    total = len(connections) + 20
    wait_until(
        lambda: _every_worker_counts(connections, served, total),
        timeout=10,
        what=f"every worker's scrape to count {total} creates",
    )

    metrics_dir = served.metrics_dir()
    victim = served.workers()[0]
    assert (metrics_dir / f"gauge_livesum_{victim.pid}.db").exists()
    victim.kill()
    victim.wait(timeout=10)
    for conn in connections:
        conn.http.close()
    wait_until(
        lambda: _ready(served) and victim.pid not in {w.pid for w in served.workers()},
        timeout=60,
        what="uvicorn to replace the killed worker",
    )
    fresh = _connections_on_every_worker(served, headers)
    total += len(fresh)
    wait_until(
        lambda: _every_worker_counts(fresh, served, total),
        timeout=10,
        what=f"every worker's scrape to count {total} creates, the killed worker's too",
    )
    assert not (metrics_dir / f"gauge_livesum_{victim.pid}.db").exists()
    assert (metrics_dir / f"counter_{victim.pid}.db").exists()
    for conn in fresh:
        conn.http.close()


def test_kill_9_of_todo_serve_stops_its_workers(served: Served) -> None:
    """Workers outliving their `todo serve` would go on serving the port (shared with the
    next one) with nobody to restart or stop them, and writing to a metrics directory
    the next one removes as an orphan: each stops (SIGTERM) when its parent dies."""
    workers = served.workers()
    assert len(workers) == WORKERS
    metrics_dir = served.metrics_dir()
    served.proc.kill()
    served.proc.wait(timeout=10)
    _, alive = psutil.wait_procs(workers, timeout=30)
    for worker in alive:  # a failed test leaves no server behind
        worker.kill()
    assert alive == [], f"workers outlived todo serve: {alive}"
    assert metrics_dir.exists()  # its maker was killed: left for the next one to remove
