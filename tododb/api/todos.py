"""Todo commands and the event-store reads of contract v1."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Response, status
from pydantic.json_schema import SkipJsonSchema

from tododb.api.auth import CurrentUser
from tododb.api.deps import ExpectedVersion, TodoApp
from tododb.api.problems import Problem
from tododb.api.schemas import (
    ETAG_HEADER,
    LOCATION_HEADER,
    X_POSITION_HEADER,
    EventOut,
    TodoCreate,
    TodoOut,
    TodoPatch,
    problem_responses,
)
from tododb.application import CommandResult

router = APIRouter(prefix="/v1/todos", tags=["todos"])

_BAD_IF_MATCH = "Malformed If-Match (`bad-if-match`)."
_BAD_BODY = "The body is not JSON (not even UTF-8)."
_CONFLICT = "Other writers kept winning the race for the next version (`conflict`)."


def _changed(status: int) -> dict[int | str, dict[str, Any]]:
    """The success response of a command: the todo's new version and log position."""
    return {
        status: {
            "headers": {
                "ETag": ETAG_HEADER,
                # Absent only if the store cannot tell the position (never in PostgreSQL).
                "X-Position": {**X_POSITION_HEADER, "required": False},
            }
        }
    }


_COMMAND_PROBLEMS = problem_responses(
    400, 401, 404, 409, 410, 412, 422, 503, described={400: _BAD_IF_MATCH, 409: _CONFLICT}
)


def _answer(response: Response, result: CommandResult) -> TodoOut:
    response.headers["ETag"] = f'"{result.todo.version}"'
    if result.position is not None:
        response.headers["X-Position"] = str(result.position)
    return TodoOut.from_todo(result.todo)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TodoOut,
    responses={
        201: {
            "headers": {
                **_changed(201)[201]["headers"],
                "Location": LOCATION_HEADER,
                "Idempotent-Replayed": {
                    "description": "`true` when an Idempotency-Key retry returned the todo "
                    "it had created (nothing recorded).",
                    "required": False,
                    "schema": {"type": "string", "enum": ["true"]},
                },
            }
        },
        **problem_responses(
            400,
            401,
            413,
            422,
            503,
            described={
                400: _BAD_BODY,
                422: "The request failed validation (`validation`), or its Idempotency-Key "
                "was used with another body (`idempotency-key-reused`).",
            },
        ),
    },
)
def create_todo(
    body: TodoCreate,
    user: CurrentUser,
    app: TodoApp,
    response: Response,
    idempotency_key: Annotated[
        # Absent is "not idempotent", and a header is never null: the document says string.
        str | SkipJsonSchema[None],
        Header(max_length=255, description="Retries with the same key return the same todo."),
    ] = None,
) -> TodoOut:
    result = app.create_todo(
        user.id,
        title=body.title,
        description=body.description,
        due=body.due,
        priority=body.priority,
        tags=body.tags,
        idempotency_key=idempotency_key,
    )
    response.headers["Location"] = f"/v1/todos/{result.todo.id}"
    if not result.recorded:
        response.headers["Idempotent-Replayed"] = "true"
    return _answer(response, result)


@router.get(
    "/{todo_id}/events",
    response_model=list[EventOut],
    responses=problem_responses(401, 404, 422, 503),
)
def list_todo_events(todo_id: UUID, user: CurrentUser, app: TodoApp) -> list[EventOut]:
    return [
        EventOut.model_validate(e, from_attributes=True) for e in app.list_events(user.id, todo_id)
    ]


@router.patch(
    "/{todo_id}",
    response_model=TodoOut,
    responses={
        **_changed(200),
        **problem_responses(
            400,
            401,
            404,
            409,
            410,
            412,
            413,
            422,
            503,
            described={
                400: f"{_BAD_BODY[:-1]}, or a malformed If-Match (`bad-if-match`).",
                409: _CONFLICT,
            },
        ),
    },
)
def update_todo(
    todo_id: UUID,
    body: TodoPatch,
    user: CurrentUser,
    app: TodoApp,
    response: Response,
    expected: ExpectedVersion,
) -> TodoOut:
    try:
        changes = body.changes()
    except ValueError as e:
        raise Problem(422, "Invalid request", str(e), type_="validation") from None
    return _answer(response, app.update_todo(user.id, todo_id, changes, expected_version=expected))


@router.post(
    "/{todo_id}/complete",
    response_model=TodoOut,
    responses={**_changed(200), **_COMMAND_PROBLEMS},
)
def complete_todo(
    todo_id: UUID, user: CurrentUser, app: TodoApp, response: Response, expected: ExpectedVersion
) -> TodoOut:
    return _answer(response, app.complete_todo(user.id, todo_id, expected_version=expected))


@router.post(
    "/{todo_id}/reopen",
    response_model=TodoOut,
    responses={**_changed(200), **_COMMAND_PROBLEMS},
)
def reopen_todo(
    todo_id: UUID, user: CurrentUser, app: TodoApp, response: Response, expected: ExpectedVersion
) -> TodoOut:
    return _answer(response, app.reopen_todo(user.id, todo_id, expected_version=expected))


@router.delete(
    "/{todo_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    # A deleted todo's second DELETE is a 204 too: never 410.
    responses={
        **_changed(204),
        **problem_responses(
            400, 401, 404, 409, 412, 422, 503, described={400: _BAD_IF_MATCH, 409: _CONFLICT}
        ),
    },
)
def delete_todo(
    todo_id: UUID, user: CurrentUser, app: TodoApp, expected: ExpectedVersion
) -> Response:
    result = app.delete_todo(user.id, todo_id, expected_version=expected)
    headers = {"ETag": f'"{result.todo.version}"'}
    if result.position is not None:
        headers["X-Position"] = str(result.position)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)
