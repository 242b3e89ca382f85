"""Shared fixtures: a real PostgreSQL server and a fresh database for this test run.

With DATABASE_URL set, tests use that server; otherwise they start the embedded one.
Either way the run gets its own database, dropped at the end, so runs never share state.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tododb.api.app import create_app
from tododb.api.auth import issue_token
from tododb.application import TodoApplication
from tododb.devservers.postgres import start_embedded
from tododb.entrypoints.bootstrap import (
    build_api_services,
    build_application,
    build_read_side,
    prepare_schemas,
)
from tododb.infra.postgres import with_database
from tododb.infra.settings import Settings
from tododb.projections.registry import ReadSide
from tododb.projections.worker import run_all

TEST_SECRET = "test-secret-" + "x" * 32
PROBLEM = "application/problem+json"


def create_todo(client: TestClient, headers: dict[str, str], **body: object) -> Any:
    """POST a todo and check it was created; the response."""
    r = client.post("/v1/todos", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """DATABASE_URL, or an embedded server whose data lives outside pytest's temporary
    root: every pytest session that starts resets that root to mode 0700, which locks the
    embedded server (running as another user) out of its own files mid-run."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    # keep=False: the server deletes its data when this process exits.
    yield start_embedded(Path(tempfile.mkdtemp(prefix="tododb-test-pg-")), keep=False)


def api_for(
    settings: Settings, todo_app: TodoApplication, read_side: ReadSide, **options: Any
) -> Any:
    """The API as `todo serve` wires it (the composition root), on this application."""
    services = build_api_services(settings, todo_app, read_side)
    prepare_schemas(services, read_side)
    return create_app(settings, services, **options)


def create_database(server_url: str, prefix: str = "tododb_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    name = create_database(server_url)
    yield with_database(server_url, name)
    drop_database(server_url, name)


@pytest.fixture
def fresh_database_url(server_url: str) -> Iterator[str]:
    """A database of its own, for tests that need an empty log."""
    name = create_database(server_url)
    yield with_database(server_url, name)
    drop_database(server_url, name)


@pytest.fixture
def fresh_app(settings: Settings, fresh_database_url: str) -> Iterator[TodoApplication]:
    """The application on a database of its own (an empty log)."""
    app = build_application(settings, fresh_database_url)
    yield app
    app.close()


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=database_url,
        jwt_secret=TEST_SECRET,  # type: ignore[arg-type]
        data_dir=tmp_path_factory.mktemp("data"),
        read_wait_seconds=2.0,
        webhook_allow_private_targets=True,  # the test webhook receivers are on loopback
        # Rate limits stay on (the dependency runs on every request) but out of reach;
        # tests/integration/test_read_protection.py builds apps with tiny ones.
        rate_limit_commands_per_second=100_000.0,
        rate_limit_commands_burst=1_000_000,
        rate_limit_queries_per_second=100_000.0,
        rate_limit_queries_burst=1_000_000,
    )


@pytest.fixture(scope="session")
def todo_app(settings: Settings, database_url: str) -> Iterator[TodoApplication]:
    app = build_application(settings, database_url)
    yield app
    app.close()


@pytest.fixture(scope="session")
def read_side(settings: Settings, database_url: str) -> ReadSide:
    side = build_read_side(settings, database_url)
    side.ensure()
    return side


@pytest.fixture(scope="session")
def projection_worker(read_side: ReadSide) -> Iterator[threading.Event]:
    """The projection worker, running in this process for the whole session."""
    stop = threading.Event()
    thread = threading.Thread(target=run_all, args=(read_side, stop), daemon=True)
    thread.start()
    yield stop
    stop.set()
    thread.join(timeout=30)


@pytest.fixture(scope="session")
def client(
    settings: Settings,
    todo_app: TodoApplication,
    read_side: ReadSide,
    projection_worker: threading.Event,
) -> Iterator[TestClient]:
    with TestClient(api_for(settings, todo_app, read_side, close_on_shutdown=False)) as c:
        yield c


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def auth() -> Callable[..., dict[str, str]]:
    def make(user_id: str, *, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(TEST_SECRET, user_id, admin=admin)}"}

    return make


@pytest.fixture
def headers(auth: Callable[..., dict[str, str]], user: str) -> dict[str, str]:
    return auth(user)


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Wait for a condition (not a fixed time); fail with ``what`` after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    delay = 0.01
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
