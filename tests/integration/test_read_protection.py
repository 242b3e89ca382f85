"""Protection of the read side: waits that hold no threads, capped waits, bounded metrics,
per-user rate limits, and bad query parameters answered 4xx (never 500)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import PROBLEM, api_for, wait_until
from tododb.api.positions import WaitSlots
from tododb.application import TodoApplication
from tododb.infra.settings import Settings
from tododb.projections.registry import ReadSide

FAR_AHEAD = str(2**62)
"""A valid position the log will not reach during the test."""

Auth = Callable[..., dict[str, str]]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def slots_of(client: TestClient) -> WaitSlots:
    slots: WaitSlots = client.app.state.read_waits  # type: ignore[attr-defined]
    return slots


def problem_type(response: Any) -> str:
    assert response.headers["content-type"] == PROBLEM
    kind: str = response.json()["type"]
    return kind.rsplit("/", 1)[-1]


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=64) as executor:
        yield executor


def start_waits(
    pool: ThreadPoolExecutor, client: TestClient, headers: list[dict[str, str]]
) -> list[Future[Any]]:
    """Far-ahead reads of /v1/stats, one per header set, sent concurrently."""
    return [
        pool.submit(client.get, "/v1/stats", headers={"X-Min-Position": FAR_AHEAD, **h})
        for h in headers
    ]


def test_pending_waits_hold_no_threads(
    client: TestClient, auth: Auth, pool: ThreadPoolExecutor
) -> None:
    waiting = start_waits(pool, client, [auth(unique("waiter")) for _ in range(60)])
    slots = slots_of(client)
    wait_until(lambda: slots.active == 60, timeout=1.5, what="60 pending waits")

    started = time.perf_counter()
    plain = client.get("/v1/stats", headers=auth(unique("plain")))
    elapsed = time.perf_counter() - started

    assert plain.status_code == 200, plain.text
    assert slots.active == 60, "the waits were still pending while the plain read ran"
    assert elapsed < 1.0, f"a plain read took {elapsed:.2f}s behind 60 pending waits"
    for future in waiting:
        behind = future.result(timeout=10)
        assert behind.status_code == 503
        assert problem_type(behind) == "read-model-behind"
        assert behind.headers["Retry-After"] == "1"
    assert slots.active == 0


@pytest.mark.parametrize(
    "value", [str(2**63), str(10**40), "-1", "abc", "1.5", "+1", "", "1_000", "0x10", "1e3"]
)
def test_a_bad_min_position_is_400_at_once(
    client: TestClient, headers: dict[str, str], value: str
) -> None:
    started = time.perf_counter()
    response = client.get("/v1/stats", headers={"X-Min-Position": value, **headers})
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, response.text
    assert problem_type(response) == "bad-min-position"
    assert elapsed < 0.5, f"answered after {elapsed:.2f}s: it waited"


def test_waits_are_capped_per_user_and_per_process(
    settings: Settings,
    todo_app: TodoApplication,
    read_side: ReadSide,
    auth: Auth,
    pool: ThreadPoolExecutor,
) -> None:
    capped = settings.model_copy(update={"read_wait_max": 3, "read_wait_max_per_user": 2})
    alice, bob, carol = (auth(unique(name)) for name in ("alice", "bob", "carol"))
    with TestClient(api_for(capped, todo_app, read_side, close_on_shutdown=False)) as api:
        slots = slots_of(api)
        waiting = start_waits(pool, api, [alice, alice])
        wait_until(lambda: slots.active == 2, timeout=1.5, what="alice's two waits")

        third = api.get("/v1/stats", headers={"X-Min-Position": FAR_AHEAD, **alice})
        assert third.status_code == 429
        assert problem_type(third) == "too-many-waits"
        assert int(third.headers["Retry-After"]) >= 1

        waiting += start_waits(pool, api, [bob])
        wait_until(lambda: slots.active == 3, timeout=1.5, what="bob's wait")
        full = api.get("/v1/todos", headers={"X-Min-Position": FAR_AHEAD, **carol})
        assert full.status_code == 503
        assert problem_type(full) == "too-many-waits"
        assert int(full.headers["Retry-After"]) >= 1
        assert api.get("/v1/stats", headers=carol).status_code == 200  # no wait, no slot

        assert [f.result(timeout=10).status_code for f in waiting] == [503, 503, 503]
        assert slots.active == 0


def series(client: TestClient, name: str) -> set[str]:
    text = client.get("/metrics").text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith(name + "{")}


def test_made_up_methods_add_at_most_one_series(client: TestClient) -> None:
    before = series(client, "tododb_http_requests_total")
    for i in range(300):
        response = client.request(f"X{i}", "/v1/stats")
        assert response.status_code == 405
    after = series(client, "tododb_http_requests_total")
    assert len(after - before) <= 1, sorted(after - before)
    assert all('method="X' not in s for s in after)


@pytest.fixture
def limited(
    settings: Settings, todo_app: TodoApplication, read_side: ReadSide
) -> Iterator[TestClient]:
    """An API whose buckets hardly refill: 3 commands and 5 queries per user."""
    tiny = settings.model_copy(
        update={
            "rate_limit_commands_per_second": 0.01,
            "rate_limit_commands_burst": 3,
            "rate_limit_queries_per_second": 0.01,
            "rate_limit_queries_burst": 5,
        }
    )
    with TestClient(api_for(tiny, todo_app, read_side, close_on_shutdown=False)) as api:
        yield api


def assert_rate_limited(response: Any) -> None:
    assert response.status_code == 429, response.text
    assert problem_type(response) == "rate-limited"
    assert int(response.headers["Retry-After"]) >= 1


def test_commands_are_rate_limited_per_user(limited: TestClient, auth: Auth) -> None:
    alice, bob = auth(unique("alice")), auth(unique("bob"))
    for _ in range(3):
        assert limited.post("/v1/todos", json={"title": "t"}, headers=alice).status_code == 201
    assert_rate_limited(limited.post("/v1/todos", json={"title": "t"}, headers=alice))
    assert_rate_limited(limited.delete(f"/v1/todos/{uuid.uuid4()}", headers=alice))

    assert limited.post("/v1/todos", json={"title": "t"}, headers=bob).status_code == 201
    assert limited.get("/v1/stats", headers=alice).status_code == 200  # queries: own bucket
    unauthenticated = limited.post("/v1/todos", json={"title": "t"})
    assert unauthenticated.status_code == 401


def test_queries_are_rate_limited_apart_from_commands(limited: TestClient, auth: Auth) -> None:
    alice = auth(unique("alice"))
    for path in ("/v1/stats", "/v1/todos", "/v1/notifications", "/v1/analytics", "/v1/stats"):
        assert limited.get(path, headers=alice).status_code == 200, path
    assert_rate_limited(limited.get("/v1/todos", headers=alice))
    assert limited.post("/v1/todos", json={"title": "t"}, headers=alice).status_code == 201
    assert limited.get("/healthz").status_code == 200  # probes are never limited


def test_the_openapi_document_lists_the_new_answers(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        "/v1/stats": {"400", "429", "503"},
        "/v1/todos": {"400", "422", "429", "503"},
        "/v1/todos/{todo_id}": {"400", "429", "503"},
        "/v1/analytics": {"422", "429", "503"},
        "/v1/notifications": {"400", "429", "503"},
    }
    for path, codes in expected.items():
        assert codes <= set(paths[path]["get"]["responses"]), path
    assert "429" in paths["/v1/todos"]["post"]["responses"]
    assert "429" not in paths["/healthz"]["get"]["responses"]


@pytest.mark.parametrize(
    "params",
    [
        {"q": "a\x00b"},
        {"q": "\x00"},
        {"q": "tab\there"},
        {"q": "\x7f"},
        {"due_after": "0"},
        {"due_before": "1700000000"},
        {"due_after": "2030-01-01"},
        {"due_after": "2030-01-01T00:00:00"},
        {"due_before": "next tuesday"},
    ],
)
def test_bad_list_parameters_are_422(
    client: TestClient, headers: dict[str, str], params: dict[str, str]
) -> None:
    response = client.get("/v1/todos", params=params, headers=headers)
    assert response.status_code == 422, response.text
    assert problem_type(response) == "validation"


@pytest.mark.parametrize(
    "params",
    [
        {"due_after": "2030-01-01T00:00:00Z"},
        {"due_before": "2030-01-01T00:00:00.123456+02:00"},
        {"due_after": "0001-01-01T00:00:00+23:59"},
        {"due_before": "9999-12-31T23:59:59-23:59"},
        {"q": "milk"},
    ],
)
def test_good_list_parameters_are_200(
    client: TestClient, headers: dict[str, str], params: dict[str, str]
) -> None:
    response = client.get("/v1/todos", params=params, headers=headers)
    assert response.status_code == 200, response.text


def test_undecodable_search_text_is_no_500(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/v1/todos?q=%ED%A0%80%FF", headers=headers)
    assert response.status_code in (200, 422), response.text


@pytest.mark.parametrize(
    "params",
    [{"to": "0"}, {"from": "0"}, {"to": "20300101"}, {"from": "2030-1-1"}, {"to": "1700000000"}],
)
def test_analytics_dates_must_be_iso_strings(
    client: TestClient, headers: dict[str, str], params: dict[str, str]
) -> None:
    response = client.get("/v1/analytics", params=params, headers=headers)
    assert response.status_code == 422, response.text
    assert problem_type(response) == "validation"


@pytest.mark.parametrize(
    "params", [{"to": "0001-01-05"}, {"from": "9999-12-01", "to": "9999-12-31"}]
)
def test_analytics_at_the_ends_of_the_calendar(
    client: TestClient, headers: dict[str, str], params: dict[str, str]
) -> None:
    response = client.get("/v1/analytics", params=params, headers=headers)
    assert response.status_code == 200, response.text
