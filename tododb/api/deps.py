"""FastAPI dependencies: the one place request handlers get their collaborators."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request

from tododb.api.problems import Problem
from tododb.application import TodoApplication
from tododb.consumers.analytics.store import AnalyticsStore
from tododb.consumers.notifications.store import NotificationsStore
from tododb.infra.postgres import ConnectionFactory

_ETAG = re.compile(r'^\s*"(\d+)"\s*$')


def get_todo_app(request: Request) -> TodoApplication:
    app: TodoApplication = request.app.state.services.todo_app
    return app


def get_connect(request: Request) -> ConnectionFactory:
    """Lends pooled connections for the read models' queries (taken only when needed,
    never held while a request waits for a position)."""
    connect: ConnectionFactory = request.app.state.services.connect
    return connect


def get_notifications(request: Request) -> NotificationsStore:
    store: NotificationsStore = request.app.state.services.notifications
    return store


def get_analytics(request: Request) -> AnalyticsStore:
    store: AnalyticsStore = request.app.state.services.analytics
    return store


def expected_version(
    if_match: Annotated[
        str | None,
        Header(description='`"<version>"` from an ETag; a stale one answers 412.'),
    ] = None,
) -> int | None:
    if if_match is None or if_match.strip() == "*":
        return None
    match = _ETAG.match(if_match)
    if match is None:
        raise Problem(
            400, "Bad If-Match", 'If-Match must be a version ETag such as "3"', type_="bad-if-match"
        )
    return int(match.group(1))


TodoApp = Annotated[TodoApplication, Depends(get_todo_app)]
Connect = Annotated[ConnectionFactory, Depends(get_connect)]
Notifications = Annotated[NotificationsStore, Depends(get_notifications)]
Analytics = Annotated[AnalyticsStore, Depends(get_analytics)]
ExpectedVersion = Annotated[int | None, Depends(expected_version)]
