"""Query endpoints over the read models, with read-your-writes via X-Min-Position.

The endpoints are async only to wait for a position on the event loop; their database
work runs in the threadpool once the wait is over, so a pending wait holds neither a
worker thread nor a pooled connection.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    WithJsonSchema,
)
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from tododb.api.auth import CurrentUser, User
from tododb.api.deps import Connect, TodoApp
from tododb.api.positions import PositionWatcher, WaitRefused, WaitSlots
from tododb.api.problems import Problem
from tododb.api.schemas import (
    ETAG_HEADER,
    X_POSITION_HEADER,
    Tag,
    TodoOut,
    problem_responses,
    rfc3339,
)
from tododb.application import TodoApplication, TodoGone, TodoNotFound
from tododb.domain.invariants import USER_ID_MAX
from tododb.infra.postgres import ConnectionFactory
from tododb.projections.queries import (
    LIST_SORTS,
    InvalidCursor,
    ListEntry,
    ListPage,
    Page,
    ReadModelQueries,
    SortKey,
    TodoFilter,
    TodoRow,
)

MAX_POSITION = 2**63 - 1
_POSITION = re.compile(r"[0-9]{1,19}")
_NOT_IN_SEARCH = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
SEARCH_TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]*$"
"""``search_text`` as a JSON Schema pattern, for the OpenAPI document."""

router = APIRouter(prefix="/v1", tags=["queries"])

_BAD_POSITION_OR_CURSOR = (
    "Malformed X-Min-Position (`bad-min-position`), or a cursor issued for another query "
    "(`invalid-cursor`)."
)
"""The 400 of the paged queries (todos and lists)."""

_WAITS = {
    400: "Malformed X-Min-Position (`bad-min-position`).",
    429: "Rate limit reached, or too many X-Min-Position reads of this user waiting at "
    "once (`too-many-waits`); see Retry-After.",
    503: "The read model has not reached X-Min-Position in time (`read-model-behind`, with "
    "its `position`), too many reads waiting on this server (`too-many-waits`), or the "
    "database is unreachable (`unavailable`); see Retry-After.",
}


def search_text(value: str) -> str:
    """One line of printable text: PostgreSQL ``text`` cannot hold a NUL (it was a 500)."""
    bad = _NOT_IN_SEARCH.search(value)
    if bad is not None:
        code = f"U+{ord(bad.group()):04X}"
        raise ValueError(f"must not contain control characters or lone surrogates (found {code})")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(rfc3339)]
SearchText = Annotated[str, AfterValidator(search_text)]
ASSIGNEE_PATTERN = rf"^[A-Za-z0-9._~@:|+=-]{{1,{USER_ID_MAX}}}$"
"""``me`` or a user id (``me`` is the caller)."""


class TodoPage(BaseModel):
    items: list[TodoOut]
    next_cursor: str | None


class ListSummary(BaseModel):
    """One of the caller's lists, as the todos read model has it."""

    id: UUID
    name: str
    inbox: bool = Field(description="The caller's Inbox: theirs alone, made on first use.")
    owner: str = Field(description="Who created the list.")
    role: Literal["owner", "editor", "viewer"] = Field(description="The caller's role.")
    open_todos: int
    version: int = Field(description="0 for an Inbox no command has made yet.")
    created_at: datetime | None
    updated_at: datetime | None


class ListSummaryPage(BaseModel):
    items: list[ListSummary]
    next_cursor: str | None


class Stats(BaseModel):
    open: int
    completed: int
    overdue: int
    total: int
    completed_last_7_days: int


def todo_out(row: TodoRow) -> TodoOut:
    return TodoOut.model_validate(
        {name: getattr(row, name) for name in TodoOut.model_fields}, from_attributes=False
    )


async def min_position(
    x_min_position: Annotated[
        str | None,
        Header(
            description="Wait until the read model has applied this log position "
            "(the X-Position of an earlier command): an integer from 0 to 2^63-1.",
        ),
        # Parsed here (a bad one is a 400, not a 422); absent is "no wait", never null.
        WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_POSITION}),
    ] = None,
) -> int | None:
    """The parsed header; anything but a 64-bit position is a 400 at once, never a wait.
    (Async only so that parsing it takes no worker thread.)"""
    return parse_position(x_min_position, "X-Min-Position", "bad-min-position")


def parse_position(value: str | None, header: str, problem_type: str) -> int | None:
    """A log position from a header (None if absent); anything else is a 400."""
    if value is None:
        return None
    text = value.strip()
    if _POSITION.fullmatch(text) is None or int(text) > MAX_POSITION:
        raise Problem(
            400,
            f"Bad {header}",
            f"{header} must be an integer from 0 to {MAX_POSITION}",
            type_=problem_type,
        )
    return int(text)


MinPosition = Annotated[int | None, Depends(min_position)]


def _too_many_waits(refused: WaitRefused, limit: int) -> Problem:
    if refused.per_user:
        return Problem(
            429,
            "Too many waits",
            f"at most {limit} X-Min-Position reads may wait at once per user",
            type_="too-many-waits",
            headers={"Retry-After": "1"},
        )
    return Problem(
        503,
        "Too many waits",
        "too many X-Min-Position reads are waiting on this server",
        type_="too-many-waits",
        headers={"Retry-After": "1"},
    )


async def _await_position(request: Request, user: User, kind: str, position: int | None) -> None:
    """Return once the ``kind`` view has applied ``position``; 503 after the wait limit."""
    watcher: PositionWatcher = request.app.state.services.positions
    if position is None or watcher.reached(kind, position):
        return
    slots: WaitSlots = request.app.state.read_waits
    timeout: float = request.app.state.read_wait_seconds
    try:
        with slots.hold(user.id):
            async with asyncio.timeout(timeout):
                await watcher.wait(kind, position)
    except WaitRefused as refused:
        raise _too_many_waits(refused, slots.max_per_user) from None
    except TimeoutError:
        raise Problem(
            503,
            "Read model behind",
            f"the {kind} view has not reached position {position} within {timeout:g}s",
            type_="read-model-behind",
            headers={"Retry-After": "1"},
            position=watcher.positions.get(kind, 0),
        ) from None


def _queries(request: Request) -> ReadModelQueries:
    queries: ReadModelQueries = request.app.state.services.read_queries
    return queries


@router.get(
    "/todos",
    response_model=TodoPage,
    responses={
        200: {"headers": {"X-Position": X_POSITION_HEADER}},
        **problem_responses(
            400,
            401,
            422,
            429,
            503,
            described={
                **_WAITS,
                400: _BAD_POSITION_OR_CURSOR,
                422: "Invalid parameters (`validation`), e.g. `sort=position` without "
                "`list_id`.",
            },
        ),
    },
)
async def list_todos(
    request: Request,
    response: Response,
    user: CurrentUser,
    connect: Connect,
    min_pos: MinPosition,
    # Absent parameters are "no filter"; none of them takes null, so none is documented so.
    status: Literal["open", "completed"] | SkipJsonSchema[None] = None,
    tag: Annotated[Tag | SkipJsonSchema[None], Query()] = None,
    priority: Literal["low", "normal", "high"] | SkipJsonSchema[None] = None,
    due_before: Annotated[
        Instant | SkipJsonSchema[None], Query(description="RFC 3339, with offset.")
    ] = None,
    due_after: Annotated[
        Instant | SkipJsonSchema[None], Query(description="RFC 3339, with offset.")
    ] = None,
    q: Annotated[
        SearchText | SkipJsonSchema[None],
        Query(
            min_length=1,
            max_length=200,
            description="Case-insensitive, in title and description; no control characters.",
            json_schema_extra={"pattern": SEARCH_TEXT_PATTERN},
        ),
    ] = None,
    list_id: Annotated[
        UUID | SkipJsonSchema[None],
        Query(description="Only this list's todos (none if the caller is not a member)."),
    ] = None,
    assignee: Annotated[
        str | SkipJsonSchema[None],
        Query(
            min_length=1,
            max_length=USER_ID_MAX,
            pattern=ASSIGNEE_PATTERN,
            description="Only the todos assigned to this user; `me` is the caller.",
        ),
    ] = None,
    sort: Annotated[
        SortKey,
        Query(description="`position` is the list's own order: it needs `list_id`."),
    ] = "created_at",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | SkipJsonSchema[None],
        # Room for a position cursor: order keys grow a little with each move into one gap.
        Query(max_length=4000, description="`next_cursor` of the previous page, same query."),
    ] = None,
) -> TodoPage:
    """The todos of every list the caller is a member of (their Inbox included),
    keyset-paginated: pages stay correct while todos are added."""
    if sort in LIST_SORTS and list_id is None:
        raise Problem(
            422,
            "Invalid request",
            f"sort={sort} orders the todos of one list: give list_id",
            type_="validation",
            errors=[
                {
                    "loc": ["query", "sort"],
                    "msg": "sorting by position needs list_id",
                    "type": "needs_list_id",
                }
            ],
        )
    await _await_position(request, user, "todos", min_pos)
    who = user.id if assignee == "me" else assignee
    filters = TodoFilter(status, tag, priority, due_before, due_after, q, list_id, who)
    page = await run_in_threadpool(
        _read_page, _queries(request), connect, user.id, filters, sort, limit, cursor
    )
    response.headers["X-Position"] = str(page.position)
    return TodoPage(items=[todo_out(r) for r in page.items], next_cursor=page.next_cursor)


def _read_page(
    queries: ReadModelQueries,
    connect: ConnectionFactory,
    user: str,
    filters: TodoFilter,
    sort: str,
    limit: int,
    cursor: str | None,
) -> Page:
    try:
        with connect() as conn:
            return queries.list_todos(conn, user, filters, sort=sort, limit=limit, cursor=cursor)
    except InvalidCursor as e:
        raise Problem(400, "Invalid cursor", str(e), type_="invalid-cursor") from None


@router.get(
    "/todos/{todo_id}",
    response_model=TodoOut,
    responses={
        200: {
            "headers": {
                "ETag": ETAG_HEADER,
                # Not on ?as_of_version=N, which reads the event store, not a read model.
                "X-Position": {**X_POSITION_HEADER, "required": False},
            }
        },
        **problem_responses(
            400,
            401,
            404,
            410,
            422,
            429,
            503,
            described={
                **_WAITS,
                404: "No such todo in a list the caller is a member of, or no such version "
                "(`not-found`, `version-not-found`).",
            },
        ),
    },
)
async def get_todo(
    todo_id: UUID,
    request: Request,
    response: Response,
    user: CurrentUser,
    app: TodoApp,
    connect: Connect,
    min_pos: MinPosition,
    as_of_version: Annotated[
        # The bound inside the union: on it, the document would say `ge`, not `minimum`.
        Annotated[int, Field(ge=1)] | SkipJsonSchema[None],
        Query(description="Time travel: the state at this version (read from the event store)."),
    ] = None,
) -> TodoOut:
    if as_of_version is not None:
        return await run_in_threadpool(_past_todo, app, response, user.id, todo_id, as_of_version)
    await _await_position(request, user, "todos", min_pos)
    row, position = await run_in_threadpool(
        _read_todo, _queries(request), connect, user.id, todo_id
    )
    response.headers["ETag"] = f'"{row.version}"'
    response.headers["X-Position"] = str(position)
    return todo_out(row)


def _past_todo(
    app: TodoApplication, response: Response, owner: str, todo_id: UUID, version: int
) -> TodoOut:
    todo = app.get_todo(owner, todo_id, version=version)
    response.headers["ETag"] = f'"{todo.version}"'
    return TodoOut.from_todo(todo)


def _read_todo(
    queries: ReadModelQueries, connect: ConnectionFactory, user: str, todo_id: UUID
) -> tuple[TodoRow, int]:
    """The row and the position it reflects, read in one snapshot."""
    with connect() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        row = queries.get_todo(conn, user, todo_id)
        position = queries.positions(conn)["todos"]
    if row is None:
        raise TodoNotFound(str(todo_id))
    if row.deleted:
        raise TodoGone(str(todo_id))
    return row, position


@router.get(
    "/stats",
    response_model=Stats,
    responses={
        200: {"headers": {"X-Position": X_POSITION_HEADER}},
        # 422 cannot happen (no parameter FastAPI validates), but FastAPI documents one
        # wherever there are parameters: this one at least has the right media type.
        **problem_responses(400, 401, 422, 429, 503, described=_WAITS),
    },
)
async def get_stats(
    request: Request, response: Response, user: CurrentUser, connect: Connect, min_pos: MinPosition
) -> Stats:
    """Open, completed, overdue (open and due before now), total, completed in the last 7 days:
    over every list the caller is a member of (their Inbox included)."""
    await _await_position(request, user, "stats", min_pos)
    figures = await run_in_threadpool(_read_stats, _queries(request), connect, user.id)
    response.headers["X-Position"] = str(figures.pop("position"))
    return Stats(**figures)


def _read_stats(
    queries: ReadModelQueries, connect: ConnectionFactory, user: str
) -> dict[str, int]:
    with connect() as conn:
        return queries.stats(conn, user)


@router.get(
    "/lists",
    response_model=ListSummaryPage,
    responses={
        200: {"headers": {"X-Position": X_POSITION_HEADER}},
        **problem_responses(
            400,
            401,
            422,
            429,
            503,
            described={
                **_WAITS,
                400: _BAD_POSITION_OR_CURSOR,
            },
        ),
    },
)
async def list_lists(
    request: Request,
    response: Response,
    user: CurrentUser,
    connect: Connect,
    min_pos: MinPosition,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | SkipJsonSchema[None],
        Query(max_length=1000, description="`next_cursor` of the previous page."),
    ] = None,
) -> ListSummaryPage:
    """The lists the caller is a member of, with their role: their Inbox first (even
    before it is made), then the others oldest first, keyset-paginated."""
    await _await_position(request, user, "todos", min_pos)
    page = await run_in_threadpool(_read_lists, _queries(request), connect, user.id, limit, cursor)
    response.headers["X-Position"] = str(page.position)
    return ListSummaryPage(
        items=[_list_summary(entry) for entry in page.items], next_cursor=page.next_cursor
    )


def _list_summary(entry: ListEntry) -> ListSummary:
    return ListSummary.model_validate(asdict(entry))


def _read_lists(
    queries: ReadModelQueries,
    connect: ConnectionFactory,
    user: str,
    limit: int,
    cursor: str | None,
) -> ListPage:
    try:
        with connect() as conn:
            return queries.lists(conn, user, limit=limit, cursor=cursor)
    except InvalidCursor as e:
        raise Problem(400, "Invalid cursor", str(e), type_="invalid-cursor") from None
