"""A worker's own HTTP port: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

A small threaded HTTP server beside the worker's real work, so a probe is answered even
while the worker is busy or waiting out an outage:

- ``/healthz``: the process is alive (its checks say so: e.g. an event loop that still
  turns); 200 ``{"status": "ok"}``, else 503.
- ``/readyz``: its dependencies answer and it is making progress, or standing by;
  200 ``{"status": "ok", "checks": {...}}``, else 503 with ``"status": "unavailable"``
  and each failed check's reason.
- ``/metrics``: the process's registry in the Prometheus text format.

Checks are plain callables returning ``(ok, detail)``; one that raises counts as failed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
"""A probe's check: (passed, why) — ``why`` is shown either way."""


def run_checks(checks: Mapping[str, Check]) -> tuple[bool, dict[str, Any]]:
    results: dict[str, Any] = {}
    ok = True
    for name, check in checks.items():
        try:
            passed, detail = check()
        except Exception as e:  # a failing check is a failed probe, never a crash
            passed, detail = False, f"{type(e).__name__}: {e}"
        results[name] = {"ok": passed, "detail": detail}
        ok = ok and passed
    return ok, results


class ProbeServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` in a thread
    (port 0: an ephemeral one, see ``port`` after ``start``)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        alive: Mapping[str, Check] | None = None,
        ready: Mapping[str, Check] | None = None,
        role: str = "",
    ) -> None:
        self.host = host
        self.requested_port = port
        self.registry = registry
        self.alive = dict(alive or {})
        self.ready = dict(ready or {})
        self.role = role
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    def start(self) -> ProbeServer:
        server = ThreadingHTTPServer((self.host, self.requested_port), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"probes-{self.role}", daemon=True
        )
        self._thread.start()
        log.info("%s: /metrics, /healthz and /readyz on %s", self.role or "worker", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ProbeServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        path = path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path in ("/healthz", "/readyz"):
            ok, results = run_checks(self.alive if path == "/healthz" else self.ready)
            body = {"status": "ok" if ok else "unavailable", "role": self.role, "checks": results}
            return (200 if ok else 503), "application/json", json.dumps(body).encode()
        return 404, "application/json", b'{"status": "not found"}'


def _handler(probes: ProbeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, content_type, body = probes.answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("probe %s", format % args)

    return Handler


class Heartbeat:
    """Liveness of a loop: ``beat()`` from the loop, ``check`` fails when it stopped
    beating for ``stale_after`` seconds (a wedged event loop)."""

    def __init__(self, stale_after: float = 30.0) -> None:
        self.stale_after = stale_after
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def check(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last
        return age < self.stale_after, f"last beat {age:.1f}s ago"


class Progress:
    """Whether a follower makes progress: its position moved within ``stall_after``
    seconds, or it has nothing to do (lag 0). Fed at each look (a probe, a scrape)."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self._position: int | None = None
        self._moved = time.monotonic()

    def check(self, position: int, lag: int) -> tuple[bool, str]:
        now = time.monotonic()
        moved = position != self._position
        if moved or lag <= 0:
            self._position, self._moved = position, now
        if lag <= 0:
            return True, f"caught up at {position}"
        if moved:
            return True, f"{lag} behind at {position}, moving"
        still = now - self._moved
        if still < self.stall_after:
            return True, f"{lag} behind at {position}, moved {still:.1f}s ago"
        return False, f"stalled: {lag} behind at {position} for {still:.1f}s"
