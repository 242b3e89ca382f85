"""List commands and the event-store read of one list (``GET /v1/lists``, the caller's
lists from the read model, is a query: ``tododb.api.queries``).

Members have roles: ``owner`` (everything, members and deleting the list included),
``editor`` (every command on the list's todos), ``viewer`` (read only). A non-member gets
404 exactly as for an unknown id; a member whose role does not allow the command, 403.
Each user's Inbox is made on first use and is theirs alone (409 ``inbox-fixed``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Request, Response, status
from starlette.concurrency import run_in_threadpool

from tododb.api.auth import CurrentUser, User
from tododb.api.deps import Connect, ExpectedVersion, TodoApp
from tododb.api.positions import PositionWatcher, WaitRefused, WaitSlots
from tododb.api.problems import Problem
from tododb.api.schemas import (
    BAD_BODY,
    BAD_IF_MATCH,
    CONFLICT,
    ETAG_HEADER,
    LOCATION_HEADER,
    NOT_JSON,
    USER_ID_JSON_PATTERN,
    X_POSITION_HEADER,
    ListCreate,
    ListOut,
    ListPatch,
    MemberPut,
    problem_responses,
)
from tododb.application import ListResult, TodoApplication
from tododb.domain import InboxFixed, Role
from tododb.domain.invariants import USER_ID_MAX
from tododb.infra.postgres import ConnectionFactory
from tododb.projections.queries import ReadModelQueries

router = APIRouter(prefix="/v1/lists", tags=["lists"])

_NOT_FOUND = "No such list, or the caller is not a member of it (`not-found`): the same answer."
_OWNERS_ONLY = "Only the list's owners may do this (`forbidden`)."
_INBOX = "The caller's Inbox cannot be renamed, shared or deleted (`inbox-fixed`)."

MemberId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=USER_ID_MAX,
        pattern=USER_ID_JSON_PATTERN,
        description="A user id (the `sub` of their tokens).",
    ),
]


def _changed(code: int, *, location: bool = False) -> dict[int | str, dict[str, Any]]:
    headers: dict[str, Any] = {
        "ETag": {**ETAG_HEADER, "description": 'The list\'s version, quoted (`"3"`).'},
        "X-Position": {**X_POSITION_HEADER, "required": False},
    }
    if location:
        headers["Location"] = LOCATION_HEADER
    return {code: {"headers": headers}}


def _answer(response: Response, result: ListResult, caller: str) -> ListOut:
    _headers(response, result)
    return ListOut.from_list(result.todo_list, caller)


def _headers(response: Response, result: ListResult) -> None:
    response.headers["ETag"] = f'"{result.todo_list.version}"'
    if result.position is not None:
        response.headers["X-Position"] = str(result.position)


def _no_content(result: ListResult) -> Response:
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    _headers(response, result)
    return response


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ListOut,
    responses={
        **_changed(201, location=True),
        **problem_responses(400, 401, 413, 422, 503, described={400: NOT_JSON}),
    },
)
def create_list(body: ListCreate, user: CurrentUser, app: TodoApp, response: Response) -> ListOut:
    """A new list, with the caller as its owner."""
    result = app.create_list(user.id, body.name)
    response.headers["Location"] = f"/v1/lists/{result.todo_list.id}"
    return _answer(response, result, user.id)


@router.get(
    "/{list_id}",
    response_model=ListOut,
    responses={
        200: {"headers": {"ETag": {**ETAG_HEADER, "description": "The list's version."}}},
        **problem_responses(401, 404, 422, 503, described={404: _NOT_FOUND}),
    },
)
def get_list(list_id: UUID, user: CurrentUser, app: TodoApp, response: Response) -> ListOut:
    """The list, its members and the caller's role, from the event store (current)."""
    todo_list = app.get_list(user.id, list_id)
    response.headers["ETag"] = f'"{todo_list.version}"'
    return ListOut.from_list(todo_list, user.id)


@router.patch(
    "/{list_id}",
    response_model=ListOut,
    responses={
        **_changed(200),
        **problem_responses(
            400,
            401,
            403,
            404,
            409,
            412,
            413,
            422,
            503,
            described={
                400: BAD_BODY,
                403: _OWNERS_ONLY,
                404: _NOT_FOUND,
                409: f"{_INBOX[:-1]}, or {CONFLICT[0].lower()}{CONFLICT[1:]}",
            },
        ),
    },
)
def rename_list(
    list_id: UUID,
    body: ListPatch,
    user: CurrentUser,
    app: TodoApp,
    response: Response,
    expected: ExpectedVersion,
) -> ListOut:
    app.ensure_inbox(user.id)
    result = app.rename_list(user.id, list_id, body.name, expected_version=expected)
    return _answer(response, result, user.id)


@router.put(
    "/{list_id}/members/{member}",
    response_model=ListOut,
    responses={
        **_changed(200),
        **problem_responses(
            400,
            401,
            403,
            404,
            409,
            412,
            413,
            422,
            503,
            described={
                400: BAD_BODY,
                403: _OWNERS_ONLY,
                404: _NOT_FOUND,
                409: "The list's last owner cannot be demoted (`last-owner`); "
                f"{_INBOX[0].lower()}{_INBOX[1:-1]}; or {CONFLICT[0].lower()}{CONFLICT[1:]}",
                422: "The request failed validation (`validation`), or the list has its "
                "100 members.",
            },
        ),
    },
)
def set_member(
    list_id: UUID,
    member: MemberId,
    body: MemberPut,
    user: CurrentUser,
    app: TodoApp,
    response: Response,
    expected: ExpectedVersion,
) -> ListOut:
    """Add `member` with `role`, or change their role (owners only)."""
    app.ensure_inbox(user.id)
    result = app.set_member(user.id, list_id, member, body.role, expected_version=expected)
    return _answer(response, result, user.id)


@router.delete(
    "/{list_id}/members/{member}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
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
            described={
                400: BAD_IF_MATCH,
                403: "Only owners may remove others; any member may remove themself (`forbidden`).",
                404: _NOT_FOUND,
                409: "The list's last owner cannot leave (`last-owner`); "
                f"{_INBOX[0].lower()}{_INBOX[1:-1]}; or {CONFLICT[0].lower()}{CONFLICT[1:]}",
            },
        ),
    },
)
def remove_member(
    list_id: UUID, member: MemberId, user: CurrentUser, app: TodoApp, expected: ExpectedVersion
) -> Response:
    """Remove a member (owners), or leave (any member, with their own id). Removing
    someone who is not a member records nothing."""
    app.ensure_inbox(user.id)
    return _no_content(app.remove_member(user.id, list_id, member, expected_version=expected))


@router.delete(
    "/{list_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
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
            429,
            503,
            described={
                400: BAD_IF_MATCH,
                403: _OWNERS_ONLY,
                404: _NOT_FOUND,
                409: f"{_INBOX[:-1]}, or {CONFLICT[0].lower()}{CONFLICT[1:]}",
                429: "Rate limit reached, or too many waits of this user (`too-many-waits`).",
                503: "The todos read model did not catch up in time to find the list's todos "
                "(`read-model-behind`), too many waits (`too-many-waits`), or the database "
                "is unreachable (`unavailable`); see Retry-After.",
            },
        ),
    },
)
async def delete_list(
    list_id: UUID,
    request: Request,
    user: CurrentUser,
    app: TodoApp,
    connect: Connect,
    expected: ExpectedVersion,
) -> Response:
    """Delete the list and its todos (owners only), in one append: each todo's history
    ends in `todos.task.deleted` with reason `list_deleted`."""
    await run_in_threadpool(_check_deletable, app, user.id, list_id)
    head = await run_in_threadpool(app.head_position)
    await _await_todos_view(request, user, head)
    queries: ReadModelQueries = request.app.state.services.read_queries
    result = await run_in_threadpool(
        _delete_list, app, queries, connect, user.id, list_id, expected
    )
    return _no_content(result)


def _check_deletable(app: TodoApplication, actor: str, list_id: UUID) -> None:
    """Refuse before any wait: non-members, non-owners, the Inbox."""
    app.ensure_inbox(actor)
    if app.authorize_list(actor, list_id, Role.OWNER).inbox:
        raise InboxFixed("an Inbox cannot be deleted")


def _delete_list(
    app: TodoApplication,
    queries: ReadModelQueries,
    connect: ConnectionFactory,
    actor: str,
    list_id: UUID,
    expected: int | None,
) -> ListResult:
    with connect() as conn:
        todo_ids = queries.todo_ids_in_list(conn, list_id)
    return app.delete_list(actor, list_id, todo_ids, expected_version=expected)


async def _await_todos_view(request: Request, user: User, position: int) -> None:
    """Until the todos view has applied ``position`` (the log's head when the delete
    began), so that it names every todo of the list; 503 after the read wait limit."""
    watcher: PositionWatcher = request.app.state.services.positions
    if watcher.reached("todos", position):
        return
    slots: WaitSlots = request.app.state.read_waits
    timeout: float = request.app.state.read_wait_seconds
    try:
        with slots.hold(user.id):
            async with asyncio.timeout(timeout):
                await watcher.wait("todos", position)
    except WaitRefused as refused:
        raise Problem(
            429 if refused.per_user else 503,
            "Too many waits",
            "too many reads are waiting for the read model",
            type_="too-many-waits",
            headers={"Retry-After": "1"},
        ) from None
    except TimeoutError:
        raise Problem(
            503,
            "Read model behind",
            f"the todos view has not reached position {position} within {timeout:g}s",
            type_="read-model-behind",
            headers={"Retry-After": "1"},
            position=watcher.positions.get("todos", 0),
        ) from None
