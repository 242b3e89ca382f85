"""Honest outcomes under real faults: a stored command reports success, an unreachable
database answers 503 within the configured timeout, health never waits on the pool, and
service resumes within seconds of the database's return, however long it was away.

Each test runs on a PostgreSQL server of its own (tests/faults.py), crashed and revived.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import PROBLEM, TEST_SECRET, api_for, create_database, wait_until
from tests.faults import CommitDropper, DisposablePostgres
from tests.servers import ready, serving
from tododb.api.auth import issue_token
from tododb.entrypoints.bootstrap import build_application, build_read_side
from tododb.infra.postgres import with_database
from tododb.infra.settings import Settings
from tododb.projections.worker import run_all

pytestmark = pytest.mark.integration

CONNECT_TIMEOUT = 2
"""Seconds; a probe that waited on the pool would take this long, so probes must beat it."""


@pytest.fixture(scope="module")
def faulty_pg() -> Iterator[DisposablePostgres]:
    # Not under pytest's tmp folder: the server runs as another user, and pytest resets
    # its folder's permissions between sessions.
    pg = DisposablePostgres(Path(tempfile.mkdtemp(prefix="tododb-faulty-pg-")))
    yield pg
    pg.start()  # leave it running for its own clean-up


def test_a_command_whose_commit_answer_was_lost_reports_success(
    faulty_pg: DisposablePostgres, settings: Settings, auth: Callable[..., dict[str, str]]
) -> None:
    """The connection drops right after COMMIT; the library retries the insert and meets
    its own row. The command was stored, so it answers 2xx, and it is stored once."""
    proxy = CommitDropper(faulty_pg.socket_path)
    url = proxy.url(create_database(faulty_pg.url))
    s = settings.model_copy(update={"database_url": url})
    todo_app = build_application(s, url)
    headers = auth("alice")
    try:
        with TestClient(api_for(s, todo_app, build_read_side(s, url))) as client:
            proxy.armed.set()
            created = client.post("/v1/todos", json={"title": "once"}, headers=headers)
            assert proxy.dropped.is_set(), "the fault was not injected"
            assert created.status_code == 201, created.text
            todo_id = created.json()["id"]

            proxy.dropped.clear()
            proxy.armed.set()
            patched = client.patch(
                f"/v1/todos/{todo_id}",
                json={"title": "twice"},
                headers={**headers, "If-Match": '"1"'},
            )
            assert proxy.dropped.is_set(), "the fault was not injected"
            assert patched.status_code == 200, patched.text
            assert patched.json()["version"] == 2

            events = client.get(f"/v1/todos/{todo_id}/events", headers=headers).json()
            assert [e["type"] for e in events] == ["todos.task.created", "todos.task.title_changed"]
            listed = client.get("/v1/todos", headers={**headers, "X-Min-Position": "0"})
            assert listed.status_code in (200, 503)  # the API is still serving
    finally:
        todo_app.close()
        proxy.close()


@pytest.fixture
def served(faulty_pg: DisposablePostgres, tmp_path: Path) -> Iterator[str]:
    """`todo serve` in a process of its own, on the faulty server, with a short timeout."""
    url = with_database(faulty_pg.url, create_database(faulty_pg.url))
    with serving(url, tmp_path, db_connect_timeout=str(CONNECT_TIMEOUT)) as (base, _):
        yield base


def _timed_create(base: str, token: str) -> tuple[int, float, str]:
    started = time.monotonic()
    r = httpx.post(
        f"{base}/v1/todos",
        json={"title": "during the outage"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return r.status_code, time.monotonic() - started, r.headers.get("content-type", "")


def test_an_outage_is_answered_in_time_and_service_resumes_promptly(
    faulty_pg: DisposablePostgres, served: str
) -> None:
    token = issue_token(TEST_SECRET, "bob")
    assert _timed_create(served, token)[0] == 201

    faulty_pg.stop()
    outcomes: list[tuple[int, float, str]] = []
    probes: list[tuple[int, float]] = []
    stop_load = threading.Event()

    def load() -> None:
        while not stop_load.is_set():
            outcomes.append(_timed_create(served, token))

    with ThreadPoolExecutor(16) as pool:
        for _ in range(16):
            pool.submit(load)
        outage_ends = time.monotonic() + 8.0  # the outage under load lasts this long
        while time.monotonic() < outage_ends:
            for path in ("/healthz", "/readyz"):
                started = time.monotonic()
                status = httpx.get(f"{served}{path}", timeout=10).status_code
                probes.append((status, time.monotonic() - started))
        stop_load.set()

    assert outcomes, "no command was sent during the outage"
    assert {status for status, _, _ in outcomes} == {503}
    assert all(ctype == PROBLEM for _, _, ctype in outcomes)
    slowest = max(seconds for _, seconds, _ in outcomes)
    assert slowest < CONNECT_TIMEOUT + 1.5, f"a command took {slowest:.1f}s to answer 503"
    slowest_probe = max(seconds for _, seconds in probes)
    assert slowest_probe < CONNECT_TIMEOUT / 2, f"a probe took {slowest_probe:.2f}s"
    assert {s for s, _ in probes} == {200, 503}  # alive, and honestly not ready

    faulty_pg.start()
    back = time.monotonic()
    wait_until(
        lambda: _timed_create(served, token)[0] == 201,
        timeout=10,
        what="a command to succeed after the database returned",
    )
    recovered = time.monotonic() - back
    assert recovered < 2.0, f"service resumed {recovered:.1f}s after the database returned"
    assert ready(served)


def test_the_projections_resume_promptly_after_an_outage(
    faulty_pg: DisposablePostgres, settings: Settings
) -> None:
    """The projection worker loses its connections with the server and, however long
    the outage, follows the log again within seconds of the server's return."""
    url = with_database(faulty_pg.url, create_database(faulty_pg.url))
    s = settings.model_copy(update={"database_url": url, "db_connect_timeout": CONNECT_TIMEOUT})
    todo_app = build_application(s, url)
    side = build_read_side(s, url)
    side.ensure()
    stop = threading.Event()
    worker = threading.Thread(target=run_all, args=(side, stop), daemon=True)
    worker.start()
    try:
        first = todo_app.create_todo("carol", title="before the outage").position or 0
        wait_until(lambda: side.position("todos") >= first, what="the view to follow")
        faulty_pg.stop()
        outage_ends = time.monotonic() + 6.0
        while time.monotonic() < outage_ends:  # commands keep coming, and keep failing
            with pytest.raises(Exception):  # noqa: PT011 - any database error will do
                todo_app.create_todo("carol", title="during the outage")
        faulty_pg.start()
        back = time.monotonic()
        second: list[int] = []
        wait_until(lambda: _created(todo_app, second), timeout=10, what="a command to succeed")
        wait_until(lambda: side.position("todos") >= second[0], timeout=10, what="the view")
        resumed = time.monotonic() - back
        assert resumed < 3.0, f"the view followed again {resumed:.1f}s after the return"
    finally:
        stop.set()
        worker.join(timeout=30)
        todo_app.close()


def _created(todo_app: Any, positions: list[int]) -> bool:
    try:
        positions.append(todo_app.create_todo("carol", title="after the outage").position)
    except Exception:
        return False
    return True
