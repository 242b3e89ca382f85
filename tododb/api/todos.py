"""Todo commands and the event-store reads of contract v1."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Response, status

from tododb.api.auth import CurrentUser
from tododb.api.deps import ExpectedVersion, TodoApp
from tododb.api.problems import Problem
from tododb.api.schemas import EventOut, ProblemOut, TodoCreate, TodoOut, TodoPatch
from tododb.application import CommandResult

PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": ProblemOut, "content": {"application/problem+json": {}}}
    for code in (401, 404, 410, 412, 413, 422)
}

router = APIRouter(prefix="/v1/todos", tags=["todos"], responses=PROBLEMS)


def _answer(response: Response, result: CommandResult) -> TodoOut:
    response.headers["ETag"] = f'"{result.todo.version}"'
    if result.position is not None:
        response.headers["X-Position"] = str(result.position)
    return TodoOut.from_todo(result.todo)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TodoOut)
def create_todo(
    body: TodoCreate,
    user: CurrentUser,
    app: TodoApp,
    response: Response,
    idempotency_key: Annotated[
        str | None,
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


@router.get("/{todo_id}/events", response_model=list[EventOut])
def list_todo_events(todo_id: UUID, user: CurrentUser, app: TodoApp) -> list[EventOut]:
    return [
        EventOut.model_validate(e, from_attributes=True) for e in app.list_events(user.id, todo_id)
    ]


@router.patch("/{todo_id}", response_model=TodoOut)
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


@router.post("/{todo_id}/complete", response_model=TodoOut)
def complete_todo(
    todo_id: UUID, user: CurrentUser, app: TodoApp, response: Response, expected: ExpectedVersion
) -> TodoOut:
    return _answer(response, app.complete_todo(user.id, todo_id, expected_version=expected))


@router.post("/{todo_id}/reopen", response_model=TodoOut)
def reopen_todo(
    todo_id: UUID, user: CurrentUser, app: TodoApp, response: Response, expected: ExpectedVersion
) -> TodoOut:
    return _answer(response, app.reopen_todo(user.id, todo_id, expected_version=expected))


@router.delete("/{todo_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_todo(
    todo_id: UUID, user: CurrentUser, app: TodoApp, expected: ExpectedVersion
) -> Response:
    result = app.delete_todo(user.id, todo_id, expected_version=expected)
    headers = {"ETag": f'"{result.todo.version}"'}
    if result.position is not None:
        headers["X-Position"] = str(result.position)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)
