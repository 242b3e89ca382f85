"""Hostile input (issue #9): every bad value is a 4xx problem, and nothing is recorded.

Each case was a 500 (which also dropped the keep-alive connection) or, worse, an event the
projections could never apply. "Nothing recorded" is checked on the event log itself:
tests in a run share one database but run one at a time, so its head must not move.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from tests.conftest import PROBLEM, TEST_SECRET, api_for, create_todo
from tododb.api.auth import issue_token
from tododb.application import TodoApplication
from tododb.infra.settings import Settings
from tododb.projections.registry import ReadSide

JWT_HEADER = b'{"alg":"HS256","typ":"JWT"}'
OVERFLOWING_DUE = "9999-12-31T23:59:59-23:59"  # past datetime.max once converted to UTC


def problem(response: Any, status: int) -> dict[str, Any]:
    """The problem document of ``response``, checked to be one with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


@contextmanager
def nothing_recorded(todo_app: TodoApplication) -> Iterator[None]:
    before = todo_app.recorder.max_notification_id()
    yield
    assert todo_app.recorder.max_notification_id() == before


def raw_json(
    client: TestClient, method: str, url: str, body: bytes, headers: dict[str, str]
) -> Any:
    """Send ``body`` as it is: JSON escapes such as a lone ``\\ud800`` reach the server."""
    return client.request(
        method, url, content=body, headers={**headers, "content-type": "application/json"}
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hand_signed_token(payload: bytes) -> str:
    """An HS256 JWT over ``payload`` exactly (PyJWT will not encode a lone surrogate)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    signing_input = f"{b64(JWT_HEADER)}.{b64(payload)}"
    signature = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


# ---- text fields ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"title": "Buy\x00milk"},
        {"title": "Buy milk", "description": "2 litres\x00"},
        {"title": "ring \x07 the bell"},
        {"title": "Buy milk", "description": "\x1b[31mred"},
    ],
)
def test_create_with_nul_or_control_characters_is_a_422(
    client: TestClient, headers: dict[str, str], todo_app: TodoApplication, body: dict[str, str]
) -> None:
    with nothing_recorded(todo_app):
        answer = problem(client.post("/v1/todos", json=body, headers=headers), 422)
    assert answer["errors"][0]["loc"][:2] in (["body", "title"], ["body", "description"])
    assert client.get("/v1/todos", headers=headers).json()["items"] == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"title": "\\ud800"}',
        b'{"title": "Buy milk", "description": "half a pair: \\udfff"}',
        b'{"title": "Buy \\u0000 milk"}',
    ],
)
def test_create_with_escaped_lone_surrogates_or_nul_is_a_422(
    client: TestClient, headers: dict[str, str], todo_app: TodoApplication, body: bytes
) -> None:
    with nothing_recorded(todo_app):
        problem(raw_json(client, "POST", "/v1/todos", body, headers), 422)


@pytest.mark.parametrize(
    "body",
    [
        b'{"title": "Buy\\u0000milk"}',
        b'{"description": "\\u0000"}',
        b'{"title": "\\ud83d"}',
        b'{"description": "ok", "title": "\\u001f"}',
    ],
)
def test_patch_with_nul_or_lone_surrogates_is_a_422_and_records_nothing(
    client: TestClient, headers: dict[str, str], todo_app: TodoApplication, body: bytes
) -> None:
    url = f"/v1/todos/{create_todo(client, headers, title='Buy milk').json()['id']}"
    with nothing_recorded(todo_app):
        problem(raw_json(client, "PATCH", url, body, headers), 422)
    assert [e["version"] for e in client.get(f"{url}/events", headers=headers).json()] == [1]


def test_tabs_newlines_and_any_unicode_are_ordinary_text(
    client: TestClient, headers: dict[str, str]
) -> None:
    body = {"title": "Buy\tmilk 🥛", "description": "line 1\r\nline 2\nçà 中文"}
    todo = create_todo(client, headers, **body).json()
    assert (todo["title"], todo["description"]) == (body["title"], body["description"])


# ---- due dates ------------------------------------------------------------------------


def test_a_due_date_that_overflows_in_utc_is_a_422_on_create(
    client: TestClient, headers: dict[str, str], todo_app: TodoApplication
) -> None:
    for due in (OVERFLOWING_DUE, "0001-01-01T00:00:00+01:00", "1899-12-31T23:59:59Z"):
        with nothing_recorded(todo_app):
            body = {"title": "Far away", "due": due}
            answer = problem(client.post("/v1/todos", json=body, headers=headers), 422)
        assert answer["errors"][0]["loc"][:2] == ["body", "due"], due


def test_a_due_date_that_overflows_in_utc_is_a_422_on_patch(
    client: TestClient, headers: dict[str, str], todo_app: TodoApplication
) -> None:
    url = f"/v1/todos/{create_todo(client, headers, title='Soon').json()['id']}"
    for due in (OVERFLOWING_DUE, "9999-06-01T00:00:00Z"):
        with nothing_recorded(todo_app):
            problem(client.patch(url, json={"due": due}, headers=headers), 422)
    assert [e["version"] for e in client.get(f"{url}/events", headers=headers).json()] == [1]


# ---- user ids from tokens ---------------------------------------------------------------


def test_a_validly_signed_token_with_an_unusable_subject_is_a_401(
    client: TestClient, todo_app: TodoApplication
) -> None:
    exp = int(time.time()) + 600
    tokens = {
        "10,000 characters": issue_token(TEST_SECRET, "x" * 10_000),
        "129 characters": issue_token(TEST_SECRET, "x" * 129),
        "a NUL": jwt.encode({"sub": "al\x00ice", "exp": exp}, TEST_SECRET, algorithm="HS256"),
        "a space": issue_token(TEST_SECRET, "alice smith"),
        "a lone surrogate": hand_signed_token(b'{"sub":"\\ud800","exp":%d}' % exp),
    }
    for what, token in tokens.items():
        with nothing_recorded(todo_app):
            response = client.post("/v1/todos", json={"title": "Mine"}, headers=bearer(token))
            answer = problem(response, 401)
        assert "not a usable user id" in answer["detail"], what
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"', what
        problem(client.get("/v1/todos", headers=bearer(token)), 401)


def test_the_hand_signed_token_is_otherwise_valid(client: TestClient) -> None:
    exp = int(time.time()) + 600
    token = hand_signed_token(b'{"sub":"hand-signed","exp":%d}' % exp)
    assert client.get("/v1/todos", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    "sub", ["alice@example.com", "auth0|5f7c8ec7c33c6c004bbafe82", "0b5f7e3c-2d1a-4c8e-9f6b"]
)
def test_subjects_of_emails_providers_and_guids_are_users(client: TestClient, sub: str) -> None:
    headers = bearer(issue_token(TEST_SECRET, f"{sub}{time.monotonic_ns()}"))
    create_todo(client, headers, title="Mine")


# ---- If-Match ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "if_match", ['"' + "9" * 5000 + '"', '"' + "1" * 11 + '"', '"2147483648"', '"-1"', '"1"x']
)
def test_an_if_match_out_of_range_is_a_400(
    client: TestClient,
    headers: dict[str, str],
    todo_app: TodoApplication,
    if_match: str,
) -> None:
    url = f"/v1/todos/{create_todo(client, headers, title='Guarded').json()['id']}"
    with nothing_recorded(todo_app):
        response = client.patch(url, json={"title": "x"}, headers={**headers, "If-Match": if_match})
        assert problem(response, 400)["type"].endswith("bad-if-match")
    assert [e["version"] for e in client.get(f"{url}/events", headers=headers).json()] == [1]


def test_the_largest_version_is_well_formed_and_stale(
    client: TestClient, headers: dict[str, str]
) -> None:
    url = f"/v1/todos/{create_todo(client, headers, title='Guarded').json()['id']}"
    pinned = {**headers, "If-Match": '"2147483647"'}
    problem(client.patch(url, json={"title": "x"}, headers=pinned), 412)


# ---- webhooks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"url": "https://8.8.8.8/hook", "secret": "0123456789abcdef\\u0000"}',
        b'{"url": "https://8.8.8.8/hook", "secret": "0123456789abcdef\\ud800"}',
        b'{"url": "https://8.8.8.8/hook", "secret": "0123456789abcdef\\u0007"}',
    ],
)
def test_a_webhook_secret_with_nul_controls_or_lone_surrogates_is_a_422(
    client: TestClient, headers: dict[str, str], body: bytes
) -> None:
    answer = problem(raw_json(client, "POST", "/v1/webhooks", body, headers), 422)
    assert answer["errors"][0]["loc"][:2] == ["body", "secret"]
    assert client.get("/v1/webhooks", headers=headers).json()["items"] == []


EMBEDDED_PRIVATE_TARGETS = [
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[64:ff9b::127.0.0.1]/",  # NAT64
    "http://[64:ff9b::169.254.169.254]/latest/meta-data",
    "http://[64:ff9b:1::a00:1]/",  # local-use NAT64
    "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
    "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
]


@pytest.fixture
def strict_api(
    settings: Settings, todo_app: TodoApplication, read_side: ReadSide
) -> Iterator[TestClient]:
    """The API with the egress guard on, as in production."""
    strict = settings.model_copy(update={"webhook_allow_private_targets": False})
    with TestClient(api_for(strict, todo_app, read_side, close_on_shutdown=False)) as api:
        yield api


def test_ipv6_forms_embedding_private_ipv4_are_refused_webhook_targets(
    strict_api: TestClient, headers: dict[str, str]
) -> None:
    for url in EMBEDDED_PRIVATE_TARGETS:
        body = {"url": url, "secret": "x" * 20}
        answer = problem(strict_api.post("/v1/webhooks", json=body, headers=headers), 422)
        assert answer["type"].endswith("webhook-target-refused"), url
    assert strict_api.get("/v1/webhooks", headers=headers).json()["items"] == []
    nat64_public = {"url": "http://[64:ff9b::8.8.8.8]/hook", "secret": "x" * 20}
    assert strict_api.post("/v1/webhooks", json=nat64_public, headers=headers).status_code == 201


# ---- the views stay healthy -------------------------------------------------------------


def test_after_all_that_the_views_still_follow_the_log(
    client: TestClient, headers: dict[str, str]
) -> None:
    """The original harm: one stored NUL stopped both projections for ever."""
    raw_json(client, "POST", "/v1/todos", b'{"title": "\\u0000"}', headers)
    created = create_todo(client, headers, title="Still here")
    fresh = {"X-Min-Position": created.headers["X-Position"], **headers}
    listed = client.get("/v1/todos", headers=fresh)
    assert listed.status_code == 200, listed.text
    assert [t["title"] for t in listed.json()["items"]] == ["Still here"]
    stats = client.get("/v1/stats", headers=fresh)
    assert stats.status_code == 200, stats.text
    assert stats.json()["total"] == 1
