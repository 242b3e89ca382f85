"""Query endpoints over the read models, with read-your-writes via X-Min-Position."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import AwareDatetime, BaseModel

from tododb.api.auth import CurrentUser
from tododb.api.deps import Connect, TodoApp
from tododb.api.positions import PositionWatcher
from tododb.api.problems import Problem
from tododb.api.schemas import ProblemOut, Tag, TodoOut
from tododb.application import TodoGone, TodoNotFound
from tododb.projections.queries import InvalidCursor, ReadModelQueries, TodoFilter, TodoRow

router = APIRouter(
    prefix="/v1",
    tags=["queries"],
    responses={
        code: {"model": ProblemOut, "content": {"application/problem+json": {}}}
        for code in (400, 401, 404, 410, 422, 503)
    },
)


class TodoPage(BaseModel):
    items: list[TodoOut]
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


def min_position(
    request: Request,
    x_min_position: Annotated[
        int | None,
        Header(
            ge=0,
            description="Wait until the read model has applied this log position "
            "(the X-Position of an earlier command).",
        ),
    ] = None,
) -> int | None:
    return x_min_position


MinPosition = Annotated[int | None, Depends(min_position)]


def _await_position(request: Request, kind: str, position: int | None) -> None:
    if position is None:
        return
    watcher: PositionWatcher = request.app.state.services.positions
    timeout: float = request.app.state.read_wait_seconds
    if not watcher.wait_for(kind, position, timeout):
        raise Problem(
            503,
            "Read model behind",
            f"the {kind} view has not reached position {position} within {timeout:g}s",
            type_="read-model-behind",
            headers={"Retry-After": "1"},
            position=watcher.positions.get(kind, 0),
        )


def _queries(request: Request) -> ReadModelQueries:
    queries: ReadModelQueries = request.app.state.services.read_queries
    return queries


@router.get("/todos", response_model=TodoPage)
def list_todos(
    request: Request,
    response: Response,
    user: CurrentUser,
    connect: Connect,
    min_pos: MinPosition,
    status: Literal["open", "completed"] | None = None,
    tag: Annotated[Tag | None, Query()] = None,
    priority: Literal["low", "normal", "high"] | None = None,
    due_before: AwareDatetime | None = None,
    due_after: AwareDatetime | None = None,
    q: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    sort: Literal[
        "created_at", "-created_at", "due", "-due", "updated_at", "-updated_at"
    ] = "created_at",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> TodoPage:
    """The caller's todos, keyset-paginated: pages stay correct while todos are added."""
    _await_position(request, "todos", min_pos)
    filters = TodoFilter(status, tag, priority, due_before, due_after, q)
    try:
        with connect() as conn:
            page = _queries(request).list_todos(
                conn, user.id, filters, sort=sort, limit=limit, cursor=cursor
            )
    except InvalidCursor as e:
        raise Problem(400, "Invalid cursor", str(e), type_="invalid-cursor") from None
    response.headers["X-Position"] = str(page.position)
    return TodoPage(items=[todo_out(r) for r in page.items], next_cursor=page.next_cursor)


@router.get("/todos/{todo_id}", response_model=TodoOut)
def get_todo(
    todo_id: UUID,
    request: Request,
    response: Response,
    user: CurrentUser,
    app: TodoApp,
    connect: Connect,
    min_pos: MinPosition,
    as_of_version: Annotated[
        int | None,
        Query(
            ge=1, description="Time travel: the state at this version (read from the event store)."
        ),
    ] = None,
) -> TodoOut:
    if as_of_version is not None:
        todo = app.get_todo(user.id, todo_id, version=as_of_version)
        response.headers["ETag"] = f'"{todo.version}"'
        return TodoOut.from_todo(todo)
    _await_position(request, "todos", min_pos)
    with connect() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        row = _queries(request).get_todo(conn, user.id, todo_id)
        position = _queries(request).positions(conn)["todos"]
    if row is None:
        raise TodoNotFound(str(todo_id))
    if row.deleted:
        raise TodoGone(str(todo_id))
    response.headers["ETag"] = f'"{row.version}"'
    response.headers["X-Position"] = str(position)
    return todo_out(row)


@router.get("/stats", response_model=Stats)
def get_stats(
    request: Request, response: Response, user: CurrentUser, connect: Connect, min_pos: MinPosition
) -> Stats:
    """Open, completed, overdue (open and due before now), total, completed in the last 7 days."""
    _await_position(request, "stats", min_pos)
    with connect() as conn:
        figures = _queries(request).stats(conn, user.id)
    response.headers["X-Position"] = str(figures.pop("position"))
    return Stats(**figures)


__all__ = ["datetime", "router"]
