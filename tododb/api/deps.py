"""FastAPI dependencies: the one place request handlers get their collaborators."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request
from pydantic.json_schema import SkipJsonSchema

from tododb.api.problems import Problem
from tododb.application import TodoApplication
from tododb.consumers.analytics.store import AnalyticsStore
from tododb.consumers.notifications.store import NotificationsStore
from tododb.infra.postgres import ConnectionFactory

# A quoted version of 1-10 ASCII digits (``\d`` would take any Unicode digit), and at most
# VERSION_MAX: int() of thousands of digits is slow, then a ValueError (Python's digit limit).
_ETAG = re.compile(r'\s*"([0-9]{1,10})"\s*')
VERSION_MAX = 2**31 - 1


def _at_most(limit: int) -> str:
    """A regular expression for the digit strings ``_ETAG`` takes (1 to as many digits as
    ``limit`` has, leading zeros allowed) whose value is at most ``limit``."""
    digits = str(limit)
    shorter = [f"[0-9]{{1,{len(digits) - 1}}}"] if len(digits) > 1 else []
    same_length = [
        f"{digits[:i]}[0-{int(d) - 1}][0-9]{{{len(digits) - i - 1}}}"
        for i, d in enumerate(digits)
        if d != "0"
    ]
    return "|".join([*shorter, *same_length, digits])


IF_MATCH_PATTERN = rf'^\s*(\*|"({_at_most(VERSION_MAX)})")\s*$'
"""What ``expected_version`` accepts, for the OpenAPI document: ``*``, or a quoted version
of at most VERSION_MAX."""


async def get_todo_app(request: Request) -> TodoApplication:
    """Async, as every dependency that neither blocks nor waits: FastAPI runs a sync
    dependency on a pool thread, a hop that costs more than the dependency."""
    app: TodoApplication = request.app.state.services.todo_app
    return app


async def get_connect(request: Request) -> ConnectionFactory:
    """Lends pooled connections for the read models' queries (taken only when needed,
    never held while a request waits for a position)."""
    connect: ConnectionFactory = request.app.state.services.connect
    return connect


async def get_notifications(request: Request) -> NotificationsStore:
    store: NotificationsStore = request.app.state.services.notifications
    return store


async def get_analytics(request: Request) -> AnalyticsStore:
    store: AnalyticsStore = request.app.state.services.analytics
    return store


async def expected_version(
    if_match: Annotated[
        # Absent is "any version", and a header is never null: the document says string.
        str | SkipJsonSchema[None],
        Header(
            description='`"<version>"` from an ETag, at most 2^31-1; a stale one answers '
            "412, a malformed one 400 `bad-if-match`. `*` or none: any version.",
            # Documented, not validated by FastAPI: a mismatch is our 400, not a 422.
            json_schema_extra={"pattern": IF_MATCH_PATTERN},
        ),
    ] = None,
) -> int | None:
    """The version a command expects (``parse_if_match``)."""
    return parse_if_match(if_match)


def parse_if_match(if_match: str | None) -> int | None:
    """The version in an If-Match header. ``"0"`` is well formed but never current (a
    412), anything else malformed or out of range is a 400, never a 500."""
    if if_match is None or if_match.strip() == "*":
        return None
    match = _ETAG.fullmatch(if_match)
    version = None if match is None else int(match.group(1))
    if version is None or version > VERSION_MAX:
        raise Problem(
            400,
            "Bad If-Match",
            f'If-Match must be a version ETag such as "3", at most {VERSION_MAX}',
            type_="bad-if-match",
        )
    return version


TodoApp = Annotated[TodoApplication, Depends(get_todo_app)]
Connect = Annotated[ConnectionFactory, Depends(get_connect)]
Notifications = Annotated[NotificationsStore, Depends(get_notifications)]
Analytics = Annotated[AnalyticsStore, Depends(get_analytics)]
ExpectedVersion = Annotated[int | None, Depends(expected_version)]
