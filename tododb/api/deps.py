"""FastAPI dependencies: the one place request handlers get their collaborators."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request

from tododb.api.problems import Problem
from tododb.application import TodoApplication

_ETAG = re.compile(r'^\s*"(\d+)"\s*$')


def get_todo_app(request: Request) -> TodoApplication:
    app: TodoApplication = request.app.state.todo_app
    return app


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
ExpectedVersion = Annotated[int | None, Depends(expected_version)]
