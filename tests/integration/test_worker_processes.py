"""The relay and a consumer as the real processes docker-compose runs (`todo relay run`,
`todo consumer analytics`): their probes on TODO_PROBE_PORT answer, their metrics show
the pipeline drained, and they log JSON lines with their role (issue #13)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.broker_fixtures import kafka_broker  # noqa: F401
from tests.conftest import wait_until
from tests.downstream import kafka_settings, scrape
from tests.servers import free_port, json_log_lines, process_env
from tododb.devservers.tansu import BrokerHandle
from tododb.entrypoints.bootstrap import build_application
from tododb.entrypoints.supervisor import todo_command
from tododb.infra.settings import Settings

pytestmark = pytest.mark.integration


def named(base: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name``, with its labels."""
    return [(dict(labels), v) for (n, labels), v in scrape(base).items() if n == name]


def status(base: str, path: str) -> int | None:
    try:
        return httpx.get(f"{base}{path}", timeout=5).status_code
    except httpx.HTTPError:
        return None


@contextmanager
def worker(argv: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """A worker process with its probes on a free port; its base URL; stopped at the end."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, env={**env, "TODO_PROBE_PORT": str(port)}, stdout=out, stderr=out
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_relay_and_consumer_processes_serve_probes_metrics_and_json_logs(
    kafka_broker: BrokerHandle,  # noqa: F811
    settings: Settings,
    fresh_database_url: str,
    tmp_path: Path,
) -> None:
    s = kafka_settings(settings, kafka_broker, database_url=fresh_database_url)
    app = build_application(s, fresh_database_url)
    try:
        for n in range(3):
            app.create_todo("alice", title=f"todo {n}")
        head = app.head_position()
    finally:
        app.close()
    env = process_env(
        fresh_database_url,
        tmp_path,
        log_format="json",
        log_level="INFO",
        kafka_bootstrap_servers=str(s.kafka_bootstrap_servers),
        kafka_topic=s.kafka_topic,
        kafka_idempotence="false",  # Tansu refuses idempotent producers
        kafka_request_timeout_ms=str(s.kafka_request_timeout_ms),
        consumer_session_timeout_ms=str(s.consumer_session_timeout_ms),
        consumer_heartbeat_interval_ms=str(s.consumer_heartbeat_interval_ms),
        lag_refresh_seconds="0.5",
    )
    relay_log, consumer_log = tmp_path / "relay.log", tmp_path / "analytics.log"
    with ExitStack() as stack:
        relay = stack.enter_context(worker(todo_command("relay", "run"), env, relay_log))
        consumer = stack.enter_context(
            worker(todo_command("consumer", "analytics"), env, consumer_log)
        )
        wait_until(lambda: status(relay, "/healthz") == 200, timeout=60, what="relay alive")
        wait_until(
            lambda: (
                named(relay, "tododb_relay_position") == [({}, head)]
                and named(relay, "tododb_relay_lag_events") == [({}, 0)]
            ),
            timeout=60,
            what="the relay to publish the whole log",
        )
        wait_until(lambda: status(relay, "/readyz") == 200, what="relay ready")

        def consumed() -> bool:
            handled = [
                v
                for labels, v in named(consumer, "tododb_consumer_messages_total")
                if labels.get("outcome") == "handled"
            ]
            lag = named(consumer, "tododb_consumer_lag_events")
            return handled == [head] and [v for _, v in lag] == [0]

        wait_until(lambda: status(consumer, "/healthz") == 200, timeout=60, what="consumer alive")
        wait_until(consumed, timeout=90, what="the analytics group to consume every event")
        wait_until(lambda: status(consumer, "/readyz") == 200, what="consumer ready")
        assert status(consumer, "/healthz") == 200
        assert [v for _, v in named(consumer, "tododb_dlq_depth")] == [0]
    for log, role in ((relay_log, "relay"), (consumer_log, "analytics")):
        for record in json_log_lines(log):
            assert {"timestamp", "level", "logger", "message", "role"} <= set(record)
            assert record["role"] == role, record
