"""Delta sync: ``GET /v1/sync`` — a snapshot, then only what changed since a token.

A client without a token pages through a snapshot of what it can see (its lists, their
members and live todos); the last page's ``next_token`` is its sync token. Later, the
same call with that token answers what changed since (upserts and removals, in log
order, ``tododb.projections.changes``), paged with ``has_more``; the last page carries
the next sync token. Tokens are opaque and signed (HMAC with the JWT secret): one that is
malformed, someone else's or too old answers 410 ``sync-token-expired``: start over.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from tododb.api.auth import CurrentUser, User
from tododb.api.deps import Connect
from tododb.api.problems import Problem
from tododb.api.queries import _WAITS, MinPosition, _await_position, todo_out
from tododb.api.schemas import X_POSITION_HEADER, MemberOut, TodoOut, problem_responses
from tododb.infra.postgres import ConnectionFactory
from tododb.projections.queries import Change, ChangeKey, ChangeQueries, ListState, changes_for

router = APIRouter(prefix="/v1", tags=["sync"])

TOKEN_VERSION = 1
_SIGNING_CONTEXT = b"tododb-sync-token:"
_ZERO = UUID(int=0)

SYNC = "s"
"""A sync token: the changes after position ``p``."""
SNAPSHOT_MORE = "n"
"""The next page of a snapshot begun at ``p``, after cursor ``c``."""
DELTA_MORE = "d"
"""The next page of the changes after ``p``, after cursor ``c``."""


class SyncMember(MemberOut):
    pass


class SyncList(BaseModel):
    """A list as the caller sees it, with its members."""

    id: UUID
    name: str
    inbox: bool
    owner: str
    role: Literal["owner", "editor", "viewer"] = Field(description="The caller's role.")
    members: list[SyncMember]
    version: int = Field(description="0 for an Inbox no command has made yet.")
    created_at: datetime | None
    updated_at: datetime | None


class SyncItem(BaseModel):
    """One change: ``upsert`` carries the current ``list`` or ``todo``; ``remove`` only
    the id (the client forgets it, and for a list, the list alone: its todos come as
    removals of their own)."""

    kind: Literal["list", "todo"]
    op: Literal["upsert", "remove"]
    id: UUID
    position: int = Field(description="The log position of the change.")
    list: SyncList | None = None
    todo: TodoOut | None = None


class SyncPage(BaseModel):
    items: list[SyncItem]
    has_more: bool = Field(
        description="More pages follow: call again at once with `next_token`. When false, "
        "keep `next_token` and call with it later for what changed since."
    )
    next_token: str
    position: int = Field(
        description="The read model's position this page reflects (a stream's Last-Event-ID "
        "may start from the last page's)."
    )


class TokenExpired(Exception):
    pass


@dataclass(frozen=True)
class SyncState:
    kind: str
    user: str
    position: int
    cursor: list[Any] | None
    issued: int


class SyncTokens:
    """Signs and checks sync tokens: base64url(JSON payload) "." base64url(HMAC-SHA256)."""

    def __init__(self, secret: str, max_age_seconds: int) -> None:
        self.key = hashlib.sha256(_SIGNING_CONTEXT + secret.encode()).digest()
        self.max_age = max_age_seconds

    def issue(self, kind: str, user: str, position: int, cursor: list[Any] | None = None) -> str:
        payload: dict[str, Any] = {
            "v": TOKEN_VERSION,
            "k": kind,
            "u": user,
            "p": position,
            "t": int(time.time()),
        }
        if cursor is not None:
            payload["c"] = cursor
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._sign(body))}"

    def read(self, token: str, user: str) -> SyncState:
        """The token's state; ``TokenExpired`` unless it is intact, ``user``'s and young."""
        try:
            body, signature = token.split(".")
            if not hmac.compare_digest(_unb64(signature), self._sign(body)):
                raise ValueError("bad signature")
            payload = json.loads(_unb64(body))
            state = SyncState(
                kind=str(payload["k"]),
                user=str(payload["u"]),
                position=int(payload["p"]),
                cursor=payload.get("c"),
                issued=int(payload["t"]),
            )
            if payload["v"] != TOKEN_VERSION or state.kind not in (SYNC, SNAPSHOT_MORE, DELTA_MORE):
                raise ValueError("unknown token")
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            raise TokenExpired("the sync token is not one this API issued") from None
        if state.user != user:
            raise TokenExpired("the sync token belongs to another user")
        if time.time() - state.issued > self.max_age:
            raise TokenExpired("the sync token is too old")
        return state

    def _sign(self, body: str) -> bytes:
        return hmac.new(self.key, body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def expired(detail: str) -> Problem:
    return Problem(
        410,
        "Sync token expired",
        f"{detail}: start over with GET /v1/sync without a token (a full snapshot)",
        type_="sync-token-expired",
    )


# ---- items --------------------------------------------------------------------------


def list_json(state: ListState, user: str) -> dict[str, Any]:
    role = state.role_of(user) or "viewer"
    return {
        "id": str(state.id),
        "name": state.name,
        "inbox": state.inbox,
        "owner": state.owner,
        "role": role,
        "members": [{"user": u, "role": r} for u, (r, _) in sorted(state.members.items())],
        "version": state.version,
        "created_at": _instant(state.created_at),
        "updated_at": _instant(state.updated_at),
    }


def _instant(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def item_json(change: Change, user: str) -> dict[str, Any]:
    """The JSON of one change, as sync pages and stream events carry it."""
    item: dict[str, Any] = {
        "kind": change.kind,
        "op": "remove" if change.removal else "upsert",
        "id": str(change.id),
        "position": change.position,
        "list": None,
        "todo": None,
    }
    if change.list_state is not None:
        item["list"] = list_json(change.list_state, user)
    if change.todo is not None:
        item["todo"] = todo_out(change.todo).model_dump(mode="json")
    return item


# ---- pages --------------------------------------------------------------------------


class TokenAhead(Exception):
    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


@dataclass(frozen=True)
class Computed:
    changes: list[Change]
    more: bool
    position: int
    next_cursor: list[Any] | None


def read_delta(
    queries: ChangeQueries,
    connect: ConnectionFactory,
    user: str,
    since: int,
    after: ChangeKey | None,
    limit: int,
) -> Computed:
    """A page of the changes after ``since`` (past ``after``), in one snapshot."""
    with connect() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        data, visible = queries.read_user_changes(conn, user, since)
    if since > data.position:
        raise TokenAhead(data.position)
    changes = changes_for(user, data, visible)
    if after is not None:
        changes = [c for c in changes if c.key > after]
    page = changes[:limit]
    more = len(changes) > limit
    cursor = list(page[-1].key) if more else None
    return Computed(page, more, data.position, cursor)


def read_snapshot(
    queries: ChangeQueries,
    connect: ConnectionFactory,
    user: str,
    cursor: list[Any] | None,
    limit: int,
) -> Computed:
    """A page of the snapshot: the lists by id, then each list's live todos in order;
    ``cursor`` is [0, last list id] or [1, list id, order key, todo id]."""
    with connect() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        position = queries.position(conn)
        lists = queries.snapshot_lists(conn, user)
        changes: list[Change] = []
        for change in _snapshot_items(queries, conn, lists, cursor, limit + 1):
            changes.append(change)
    page = changes[:limit]
    more = len(changes) > limit
    next_cursor: list[Any] | None = None
    if more:
        last = page[-1]
        if last.todo is None:
            next_cursor = [0, str(last.id)]
        else:
            next_cursor = [1, str(last.todo.list_id), last.todo.order_key, str(last.id)]
    return Computed(page, more, position, next_cursor)


def _snapshot_items(
    queries: ChangeQueries,
    conn: Any,
    lists: list[ListState],
    cursor: list[Any] | None,
    wanted: int,
) -> Iterator[Change]:
    rank = int(cursor[0]) if cursor else 0
    if rank == 0:
        after = str(cursor[1]) if cursor else ""
        for state in lists:
            if str(state.id) > after:
                yield Change(state.position, "list", state.id, list_state=state)
        start_list, start_key = "", ("", _ZERO)
    else:
        assert cursor is not None
        start_list, start_key = str(cursor[1]), (str(cursor[2]), UUID(str(cursor[3])))
    for state in lists:
        if str(state.id) < start_list:
            continue
        key = start_key if str(state.id) == start_list else ("", _ZERO)
        while True:
            rows = queries.list_page(conn, state.id, key, wanted)
            for row in rows:
                yield Change(row.position, "todo", row.id, todo=row)
            if len(rows) < wanted:
                break
            key = (rows[-1].order_key, rows[-1].id)


def _parse_delta_cursor(cursor: list[Any] | None) -> ChangeKey | None:
    if cursor is None:
        return None
    position, rank, key = cursor
    return (int(position), int(rank), str(key))


# ---- endpoint -----------------------------------------------------------------------


@router.get(
    "/sync",
    response_model=SyncPage,
    responses={
        200: {"headers": {"X-Position": X_POSITION_HEADER}},
        **problem_responses(
            400,
            401,
            410,
            422,
            429,
            503,
            described={
                **_WAITS,
                410: "The token is malformed, another user's, too old, or from another "
                "database (`sync-token-expired`): start over with a snapshot.",
            },
        ),
    },
)
async def sync(
    request: Request,
    response: Response,
    user: CurrentUser,
    connect: Connect,
    min_pos: MinPosition,
    token: Annotated[
        str | SkipJsonSchema[None],
        Query(
            max_length=2000,
            description="Absent: a snapshot. Else the `next_token` of the previous page.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> Any:
    """A snapshot of what the caller can see, or what changed since a sync token.

    Apply the items in order: `upsert` stores the list or todo, `remove` forgets it.
    The state after the last page (`has_more` false) is the caller's lists and todos at
    that page's `position`."""
    tokens: SyncTokens = request.app.state.sync_tokens
    await _await_position(request, user, "todos", min_pos)
    state = None
    if token is not None:
        try:
            state = tokens.read(token, user.id)
        except TokenExpired as e:
            raise expired(str(e)) from None
    queries: ChangeQueries = request.app.state.change_queries
    if state is None or state.kind == SNAPSHOT_MORE:
        cursor = None if state is None else state.cursor
        try:
            page = await run_in_threadpool(read_snapshot, queries, connect, user.id, cursor, limit)
        except (ValueError, TypeError, IndexError):
            raise expired("the sync token is not one this API issued") from None
        start = page.position if state is None else state.position
        next_token = (
            tokens.issue(SNAPSHOT_MORE, user.id, start, page.next_cursor)
            if page.more
            else tokens.issue(SYNC, user.id, start)
        )
        # Pages read after the first may hold later states: what changed since the
        # first one follows (a delta), so that has_more false always means "exact".
        more = page.more or page.position != start
    else:
        try:
            after = _parse_delta_cursor(state.cursor if state.kind == DELTA_MORE else None)
        except (ValueError, TypeError):
            raise expired("the sync token is not one this API issued") from None
        page = await _delta(request, user.id, connect, queries, state, after, limit)
        next_token = (
            tokens.issue(DELTA_MORE, user.id, state.position, page.next_cursor)
            if page.more
            else tokens.issue(SYNC, user.id, page.position)
        )
        more = page.more
    response.headers["X-Position"] = str(page.position)
    return {
        "items": [item_json(c, user.id) for c in page.changes],
        "has_more": more,
        "next_token": next_token,
        "position": page.position,
    }


async def _delta(
    request: Request,
    user: str,
    connect: ConnectionFactory,
    queries: ChangeQueries,
    state: SyncState,
    after: ChangeKey | None,
    limit: int,
) -> Computed:
    """The page; a token ahead of the read model waits for it (as X-Min-Position), unless
    it is so far ahead that it must come from another database (410)."""
    max_ahead: int = request.app.state.sync_token_max_ahead
    for _ in range(2):
        try:
            return await run_in_threadpool(
                read_delta, queries, connect, user, state.position, after, limit
            )
        except TokenAhead as ahead:
            if state.position - ahead.position > max_ahead:
                raise expired("the sync token is ahead of this database's log") from None
            await _await_position(request, User(user), "todos", state.position)
    raise expired("the sync token is ahead of this database's log")
