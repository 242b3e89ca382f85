"""docker-compose.yml is valid, has every process, and each has a health check.

Runs the real ``docker-compose config`` (Debian package ``docker-compose``; ``.ci/run``
installs it), which validates and normalises the file without a Docker daemon.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
WORKERS = {"projections", "relay", "notifications", "analytics"}
TODODB = {"api", *WORKERS}
SERVICES = {"postgres", "kafka", *TODODB, "prometheus", "grafana"}

pytestmark = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (apt-get install docker-compose)"
)


def compose(*args: str) -> str:
    assert COMPOSE is not None
    result = subprocess.run(
        [COMPOSE, "-f", str(ROOT / "docker-compose.yml"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def service_blocks(normalised: str) -> dict[str, str]:
    """Split ``config`` output (services at two spaces of indent) into one text per service."""
    services = ("\n" + normalised).split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    parts = re.split(r"^  ([a-z][a-z0-9_-]*):\n", services, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_compose_file_is_valid_and_runs_every_process() -> None:
    compose("config", "-q")
    assert set(compose("config", "--services").split()) == SERVICES

    blocks = service_blocks(compose("config"))
    assert set(blocks) == SERVICES
    for name, block in blocks.items():
        assert "healthcheck:" in block, f"{name} has no health check"
    assert "image: apache/kafka:" in blocks["kafka"]
    assert "KAFKA_PROCESS_ROLES: broker,controller" in blocks["kafka"]  # KRaft, no ZooKeeper
    for worker in TODODB:
        assert "KAFKA_BOOTSTRAP_SERVERS: kafka:9092" in blocks[worker]
        assert "condition: service_healthy" in blocks[worker]
    assert "published: 8000" in blocks["api"] or "8000:8000" in blocks["api"]
    # several worker processes, with the shared environment still merged in
    assert re.search(r"TODO_WEB_CONCURRENCY: ['\"]?[2-9]", blocks["api"]), blocks["api"]
    assert "DATABASE_URL: postgresql://" in blocks["api"]


def test_workers_health_checks_use_their_probes_and_prometheus_scrapes_them() -> None:
    blocks = service_blocks(compose("config"))
    for worker in WORKERS:
        block = blocks[worker]
        assert re.search(r"TODO_PROBE_PORT: ['\"]?9100", block), block
        assert "TODO_PROBE_HOST: 0.0.0.0" in block
        check = block.split("healthcheck:", 1)[1]
        # /healthz and /readyz on the probe port, not a broker socket test
        for part in ("127.0.0.1:9100", "healthz", "readyz"):
            assert part in check, check
        assert "socket.create_connection" not in check
    assert "TODO_LOG_FORMAT: json" in blocks["api"]
    assert "./deploy/prometheus/prometheus.yml" in blocks["prometheus"] or (
        "prometheus.yml" in blocks["prometheus"]
    )
    assert "provisioning" in blocks["grafana"]
    assert "dashboards" in blocks["grafana"]

    config = (ROOT / "deploy/prometheus/prometheus.yml").read_text()
    for job in TODODB:
        assert f"job_name: {job}" in config
        assert f"names: [{job}]" in config
    assert config.count("port: 9100") == len(WORKERS)
    assert "port: 8000" in config
    # the API's metrics app is mounted at /metrics/: /metrics answers a redirect
    assert "metrics_path: /metrics/ " in config


def test_grafana_dashboard_shows_commands_lag_dlq_and_circuits() -> None:
    import json

    provisioning = ROOT / "deploy/grafana/provisioning"
    assert (
        "url: http://prometheus:9090" in (provisioning / "datasources/prometheus.yml").read_text()
    )
    assert "/etc/grafana/dashboards" in (provisioning / "dashboards/tododb.yml").read_text()
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/tododb.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []))
    for metric in (
        "tododb_http_requests_total",
        "tododb_http_request_seconds_bucket",
        "tododb_append_commands_total",
        "tododb_append_batch_seconds_total",
        "tododb_projection_lag_events",
        "tododb_projection_lag_seconds",
        "tododb_relay_lag_events",
        "tododb_relay_lag_seconds",
        "tododb_consumer_lag_events",
        "tododb_consumer_lag_seconds",
        "tododb_dlq_depth",
        "tododb_webhook_circuits",
    ):
        assert metric in exprs, metric
