"""The bearer-token check remembers verified tokens: never past their expiry, never a
bad one, and never more than its size."""

from __future__ import annotations

import time
from collections.abc import Iterator
from unittest import mock

import jwt
import pytest

from tododb.api.auth import TokenVerifier, User, issue_token
from tododb.api.problems import Problem

SECRET = "unit-test-secret-" + "s" * 32


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decodes() -> Iterator[mock.MagicMock]:
    """Counts PyJWT's verifications (it still does them all)."""
    with mock.patch("tododb.api.auth.jwt.decode", wraps=jwt.decode) as counted:
        yield counted


def test_a_token_is_verified_once_then_remembered_until_it_expires(
    decodes: mock.MagicMock,
) -> None:
    clock = FakeClock()
    verifier = TokenVerifier(SECRET, leeway=5, clock=clock)
    token = issue_token(SECRET, "ann", admin=True, ttl_seconds=100)
    expires = jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]
    decodes.reset_mock()

    assert verifier.user(token) == User("ann", admin=True)
    clock.now = expires + 4.9  # within the leeway
    assert verifier.user(token) == User("ann", admin=True)
    assert decodes.call_count == 1

    clock.now = expires + 5  # past exp and leeway: not answered from memory
    verifier.user(token)  # (PyJWT's clock is the real one, where it is still valid)
    assert decodes.call_count == 2


def test_a_bad_token_is_refused_every_time_and_never_remembered(
    decodes: mock.MagicMock,
) -> None:
    verifier = TokenVerifier(SECRET)
    forged = issue_token("another-secret-" + "x" * 32, "mallory")
    expired = issue_token(SECRET, "ann", ttl_seconds=-10)

    for token, detail in ((forged, "invalid token"), (expired, "expired")):
        for _ in range(2):
            with pytest.raises(Problem) as refused:
                verifier.user(token)
            assert refused.value.status == 401
            assert detail in str(refused.value.detail)
    assert decodes.call_count == 4


def test_the_memory_is_bounded(decodes: mock.MagicMock) -> None:
    verifier = TokenVerifier(SECRET, size=2)
    first, second, third = (issue_token(SECRET, user) for user in ("a", "b", "c"))

    for token in (first, second, first, second, third, first):
        verifier.user(token)

    # the third token found the memory full: it starts again, so the first is checked anew
    assert decodes.call_count == 4
