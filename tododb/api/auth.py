"""Bearer JWTs (HS256): ``sub`` is the user id, ``admin`` a boolean claim."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tododb.api.problems import Problem
from tododb.domain.errors import InvariantViolation
from tododb.domain.invariants import USER_ID_MAX, clean_user_id

ALGORITHM = "HS256"
bearer = HTTPBearer(auto_error=False, description="A JWT from `todo token USER`.")


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


def decode_token(secret: str, token: str, *, leeway: int = 0) -> User:
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
    return User(id=_user_id(claims.get("sub")), admin=claims.get("admin") is True)


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
    """The caller, from the bearer token; 401 without a valid one. Decoded once per
    request: the rate limit and the route both ask (kept on ``request.state``)."""
    known: User | None = getattr(request.state, "user", None)
    if known is not None:
        return known
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required")
    state = request.app.state
    user = decode_token(state.jwt_secret, credentials.credentials, leeway=state.jwt_leeway)
    request.state.user = user
    return user


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """Async, like every dependency here that neither blocks nor waits: FastAPI runs a
    sync dependency on a pool thread, and the hop costs more than checking a token."""
    return authenticate(request, credentials)


async def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.admin:
        raise Problem(403, "Forbidden", "this endpoint needs an admin token", type_="forbidden")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
