"""Todo commands (moves and steps too) and the event-store reads of contract v1.

Every command needs an editor of the todo's list: a non-member gets 404 exactly as for an
unknown id, a viewer 403 (`forbidden`).
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Response, status
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from tododb.api.auth import CurrentUser
from tododb.api.deps import ExpectedVersion, TodoApp
from tododb.api.problems import Problem
from tododb.api.schemas import (
    BAD_BODY,
    BAD_IF_MATCH,
    CONFLICT,
    ETAG_HEADER,
    LOCATION_HEADER,
    NOT_JSON,
    X_POSITION_HEADER,
    EventOut,
    StepCreate,
    StepPatch,
    TodoCreate,
    TodoMove,
    TodoOut,
    TodoPatch,
    problem_responses,
)
from tododb.application import CommandResult

router = APIRouter(prefix="/v1/todos", tags=["todos"])

_FORBIDDEN = "The caller is a viewer of the todo's list: read only (`forbidden`)."
_NOT_FOUND = (
    "No such todo, or the caller is not a member of its list (`not-found`): the same answer."
)


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
    400,
    401,
    403,
    404,
    409,
    410,
    412,
    422,
    503,
    described={400: BAD_IF_MATCH, 403: _FORBIDDEN, 404: _NOT_FOUND, 409: CONFLICT},
)
_BODY_COMMAND_PROBLEMS = problem_responses(
    400,
    401,
    403,
    404,
    409,
    410,
    412,
    413,
    422,
    503,
    described={
        400: BAD_BODY,
        403: _FORBIDDEN,
        404: _NOT_FOUND,
        409: CONFLICT,
    },
)


def _answer(
    result: CommandResult, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """The todo as ``TodoOut`` JSON, with ``headers`` and its version and position.
    Returned as a Response, FastAPI sends it as it is: a sync endpoint's return value is
    otherwise validated again, on another pool thread (a thread hop and a second
    validation of a model just built: a tenth of a command's CPU)."""
    headers = {**(headers or {}), "ETag": f'"{result.todo.version}"'}
    if result.position is not None:
        headers["X-Position"] = str(result.position)
    return Response(
        TodoOut.from_todo(result.todo).model_dump_json(),
        status_code,
        headers=headers,
        media_type="application/json",
    )


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
            403,
            404,
            413,
            422,
            503,
            described={
                400: NOT_JSON,
                403: "The caller is a viewer of `list_id` (`forbidden`).",
                404: "No such list, or the caller is not a member (`not-found`).",
                422: "The request failed validation (`validation`: e.g. an invalid RRULE, "
                "or an assignee who is not a member of the list), or its Idempotency-Key "
                "was used with another body (`idempotency-key-reused`).",
            },
        ),
    },
)
async def create_todo(
    body: TodoCreate,
    user: CurrentUser,
    app: TodoApp,
    idempotency_key: Annotated[
        # Absent is "not idempotent", and a header is never null: the document says string.
        str | SkipJsonSchema[None],
        Header(max_length=255, description="Retries with the same key return the same todo."),
    ] = None,
) -> Response:
    """Async, unlike the other commands: a create in the caller's own Inbox needs no
    read, so it is decided on the event loop and waits for its batch there, holding no
    thread (``create_todo_async``); the rest runs on the thread pool, as a sync endpoint."""
    result = await app.create_todo_async(
        user.id,
        offload=run_in_threadpool,
        title=body.title,
        list_id=body.list_id,
        description=body.description,
        due=body.due,
        priority=body.priority,
        tags=body.tags,
        assignee=body.assignee,
        recurrence=body.recurrence,
        remind_at=body.remind_at,
        idempotency_key=idempotency_key,
    )
    headers = {"Location": f"/v1/todos/{result.todo.id}"}
    if not result.recorded:
        headers["Idempotent-Replayed"] = "true"
    return _answer(result, status.HTTP_201_CREATED, headers)


@router.get(
    "/{todo_id}/events",
    response_model=list[EventOut],
    responses=problem_responses(401, 404, 422, 503, described={404: _NOT_FOUND}),
)
def list_todo_events(todo_id: UUID, user: CurrentUser, app: TodoApp) -> list[EventOut]:
    return [
        EventOut.model_validate(e, from_attributes=True) for e in app.list_events(user.id, todo_id)
    ]


@router.patch(
    "/{todo_id}",
    response_model=TodoOut,
    responses={**_changed(200), **_BODY_COMMAND_PROBLEMS},
)
def update_todo(
    todo_id: UUID,
    body: TodoPatch,
    user: CurrentUser,
    app: TodoApp,
    expected: ExpectedVersion,
) -> Response:
    try:
        changes = body.changes()
    except ValueError as e:
        raise Problem(422, "Invalid request", str(e), type_="validation") from None
    return _answer(app.update_todo(user.id, todo_id, changes, expected_version=expected))


@router.post(
    "/{todo_id}/complete",
    response_model=TodoOut,
    responses={**_changed(200), **_COMMAND_PROBLEMS},
)
def complete_todo(
    todo_id: UUID, user: CurrentUser, app: TodoApp, expected: ExpectedVersion
) -> Response:
    return _answer(app.complete_todo(user.id, todo_id, expected_version=expected))


@router.post(
    "/{todo_id}/reopen",
    response_model=TodoOut,
    responses={**_changed(200), **_COMMAND_PROBLEMS},
)
def reopen_todo(
    todo_id: UUID, user: CurrentUser, app: TodoApp, expected: ExpectedVersion
) -> Response:
    return _answer(app.reopen_todo(user.id, todo_id, expected_version=expected))


@router.delete(
    "/{todo_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    # A deleted todo's second DELETE is a 204 too: never 410.
    responses={
        **_changed(204),
        **problem_responses(
            400,
            401,
            403,
            404,
            409,
            412,
            422,
            503,
            described={400: BAD_IF_MATCH, 403: _FORBIDDEN, 404: _NOT_FOUND, 409: CONFLICT},
        ),
    },
)
def delete_todo(
    todo_id: UUID, user: CurrentUser, app: TodoApp, expected: ExpectedVersion
) -> Response:
    return _no_content(app.delete_todo(user.id, todo_id, expected_version=expected))


def _no_content(result: CommandResult) -> Response:
    headers = {"ETag": f'"{result.todo.version}"'}
    if result.position is not None:
        headers["X-Position"] = str(result.position)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)


@router.post(
    "/{todo_id}/move",
    response_model=TodoOut,
    responses={
        **_changed(200),
        **problem_responses(
            400,
            401,
            403,
            404,
            409,
            410,
            412,
            413,
            422,
            503,
            described={
                400: BAD_BODY,
                403: "The caller is a viewer of the todo's list or of `list_id` (`forbidden`).",
                404: "No such todo or list, or the caller is not a member (`not-found`).",
                409: CONFLICT,
                422: "The request failed validation (`validation`): `after` or `before` is "
                "not a todo of the target list, or they are out of order.",
            },
        ),
    },
)
def move_todo(
    todo_id: UUID,
    body: TodoMove,
    user: CurrentUser,
    app: TodoApp,
    expected: ExpectedVersion,
) -> Response:
    """Move within its list or to another (`list_id`), right after `after` and/or right
    before `before` (todo ids of that list); neither: to the end. One `todos.task.moved`
    event on this todo only: its new `order_key` sorts between its neighbours'."""
    result = app.move_todo(
        user.id,
        todo_id,
        list_id=body.list_id,
        after=body.after,
        before=body.before,
        expected_version=expected,
    )
    return _answer(result)


_STEP_NOT_FOUND = (
    "No such todo or step, or the caller is not a member of the todo's list (`not-found`)."
)
_STEP_PROBLEMS = {
    **_BODY_COMMAND_PROBLEMS,
    **problem_responses(
        404,
        422,
        described={
            404: _STEP_NOT_FOUND,
            422: "The request failed validation (`validation`), e.g. a 101st step.",
        },
    ),
}


@router.post(
    "/{todo_id}/steps",
    status_code=status.HTTP_201_CREATED,
    response_model=TodoOut,
    responses={
        201: {
            "headers": {
                **_changed(201)[201]["headers"],
                "Location": LOCATION_HEADER,
            }
        },
        **_STEP_PROBLEMS,
    },
)
def add_step(
    todo_id: UUID,
    body: StepCreate,
    user: CurrentUser,
    app: TodoApp,
    expected: ExpectedVersion,
) -> Response:
    """A step at the end of the todo's checklist (at most 100); the todo, with the step's
    URL in Location."""
    result, step_id = app.add_step(user.id, todo_id, body.text, expected_version=expected)
    location = f"/v1/todos/{todo_id}/steps/{step_id}"
    return _answer(result, status.HTTP_201_CREATED, {"Location": location})


@router.patch(
    "/{todo_id}/steps/{step_id}",
    response_model=TodoOut,
    responses={**_changed(200), **_STEP_PROBLEMS},
)
def update_step(
    todo_id: UUID,
    step_id: UUID,
    body: StepPatch,
    user: CurrentUser,
    app: TodoApp,
    expected: ExpectedVersion,
) -> Response:
    """Rename (`text`), check or uncheck (`done`) and move (`index`) a step."""
    result = app.update_step(
        user.id,
        todo_id,
        step_id,
        text=body.text,
        done=body.done,
        index=body.index,
        expected_version=expected,
    )
    return _answer(result)


@router.delete(
    "/{todo_id}/steps/{step_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **_changed(204),
        **_COMMAND_PROBLEMS,
        **problem_responses(404, described={404: _STEP_NOT_FOUND}),
    },
)
def remove_step(
    todo_id: UUID, step_id: UUID, user: CurrentUser, app: TodoApp, expected: ExpectedVersion
) -> Response:
    return _no_content(app.remove_step(user.id, todo_id, step_id, expected_version=expected))
