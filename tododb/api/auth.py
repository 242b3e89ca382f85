"""Bearer JWTs (HS256): ``sub`` is the user id, ``admin`` a boolean claim."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tododb.api.problems import Problem
from tododb.api.ratelimit import check_rate
from tododb.domain.errors import InvariantViolation
from tododb.domain.invariants import USER_ID_MAX, clean_user_id

ALGORITHM = "HS256"
_BEARER = "A JWT from `todo token USER`."


@dataclass(frozen=True)
class User:
    id: str
    admin: bool = False


def issue_token(secret: str, user_id: str, *, admin: bool = False, ttl_seconds: int = 3600) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return Problem(
        401, "Unauthorized", detail, type_="unauthorized", headers={"WWW-Authenticate": challenge}
    )


def _decode(secret: str, token: str, leeway: int) -> tuple[User, int]:
    """The token's user and its ``exp``, once its signature and claims check out."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            leeway=leeway,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("the token has expired", "invalid_token") from None
    except jwt.InvalidTokenError as e:
        raise _unauthorized(f"invalid token: {e}", "invalid_token") from None
    user = User(id=_user_id(claims.get("sub")), admin=claims.get("admin") is True)
    return user, int(claims["exp"])


class TokenVerifier:
    """Checks bearer tokens, remembering the ones it has verified (at most ``size``).

    Verifying an HS256 token (PyJWT) is ~20-90 µs, some 5% of a command's CPU, and a
    client sends the same token with every request. A remembered token is the exact
    string whose signature and claims were checked, and still expires at its ``exp``
    (with the same leeway): nothing else about a verified token can change. Tokens that
    fail are never remembered, so a bad one costs a full check every time.
    """

    def __init__(
        self,
        secret: str,
        leeway: int = 0,
        size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._leeway = leeway
        self._size = size
        self._clock = clock
        self._verified: dict[str, tuple[User, int]] = {}

    def user(self, token: str) -> User:
        """The token's user; 401 (a ``Problem``) for a token that is not valid now."""
        known = self._verified.get(token)
        if known is not None and self._clock() < known[1] + self._leeway:
            return known[0]
        user, expires = _decode(self._secret, token, self._leeway)
        if len(self._verified) >= self._size:
            self._verified.clear()  # a flood of distinct tokens: start again, bounded
        self._verified[token] = (user, expires)
        return user


def _user_id(sub: object) -> str:
    """The user id a validly signed token names, if we can use it as one.

    An id we cannot store (too long for an index, a NUL, a lone surrogate...) is an
    identity we cannot act for, so it is an authentication failure (401), not a 422: the
    request never gets as far as its body. The detail names the rule, never the subject.
    """
    if not isinstance(sub, str) or not sub:
        raise _unauthorized("the token has no subject", "invalid_token")
    try:
        return clean_user_id(sub)
    except InvariantViolation:
        raise _unauthorized(
            f"the token's subject is not a usable user id (1-{USER_ID_MAX} characters of"
            " A-Z, a-z, 0-9 and . _ ~ @ : | + = -)",
            "invalid_token",
        ) from None


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> User:
    """The caller, from the bearer token; 401 without a valid one."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required")
    tokens: TokenVerifier = request.app.state.tokens
    return tokens.user(credentials.credentials)


class CallerFromBearer(HTTPBearer):
    """The caller, from the bearer token, who must be within their rate limit
    (``ratelimit.check_rate``): every route with a caller is rate limited, no other is.

    One FastAPI dependency, documented as the HTTPBearer scheme, rather than a bearer
    dependency, a caller dependency on it and a rate-limit dependency: each dependency
    FastAPI solves costs a request 2-7% of its CPU. Async, like every dependency here
    that neither blocks nor waits: FastAPI runs a sync one on a pool thread.
    """

    async def __call__(self, request: Request) -> User:  # type: ignore[override]
        user = authenticate(request, await super().__call__(request))
        check_rate(request.app.state.rate_limits, request.method, user.id)
        return user


current_user = CallerFromBearer(
    auto_error=False, description=_BEARER, scheme_name=HTTPBearer.__name__
)


async def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.admin:
        raise Problem(403, "Forbidden", "this endpoint needs an admin token", type_="forbidden")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
