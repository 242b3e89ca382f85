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
SERVICES = {"postgres", "kafka", "api", "projections", "relay", "notifications", "analytics"}

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
    for worker in SERVICES - {"postgres", "kafka"}:
        assert "KAFKA_BOOTSTRAP_SERVERS: kafka:9092" in blocks[worker]
        assert "condition: service_healthy" in blocks[worker]
    assert "published: 8000" in blocks["api"] or "8000:8000" in blocks["api"]
    # several worker processes, with the shared environment still merged in
    assert re.search(r"TODO_WEB_CONCURRENCY: ['\"]?[2-9]", blocks["api"]), blocks["api"]
    assert "DATABASE_URL: postgresql://" in blocks["api"]
