"""The live stream: ``GET /v1/stream``, Server-Sent Events of the caller's changes.

One hub per API process. The position watcher (``positions.py``) wakes it when the
todos read model commits; the hub reads the newly committed range once
(``ChangeQueries.read_range``), splits it among the open streams by what each one's user
can see (``changes_for``, the rules delta sync uses) and hands each stream its events,
one per log position: ``id:`` is the position, ``data:`` the sync items at it.

A stream that reconnects with ``Last-Event-ID`` first gets the changes after it (the
delta query), then the live tail; the hub's events at or below what was sent are
dropped, and a stream whose first live event starts past what it sent fills the gap
with the delta query again, so nothing is missed or repeated. A client too slow to take
its events (more than ``stream_queue_max`` waiting) is cut off: it reconnects with its
Last-Event-ID. Comment lines keep idle connections alive through proxies; on shutdown
every stream ends cleanly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import suppress
from typing import Annotated, Any
from uuid import UUID

import psycopg
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from psycopg.rows import dict_row
from pydantic.json_schema import WithJsonSchema
from starlette.concurrency import run_in_threadpool

from tododb.api.auth import CurrentUser
from tododb.api.deps import Connect
from tododb.api.problems import Problem
from tododb.api.queries import MAX_POSITION, parse_position
from tododb.api.schemas import problem_responses
from tododb.api.sync import TokenAhead, item_json, read_delta
from tododb.infra.postgres import ConnectionFactory
from tododb.infra.retry import Backoff
from tododb.projections.queries import (
    Change,
    ChangeQueries,
    changes_for,
    group_by_position,
    visible_after,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["sync"])

RECONNECT_BACKOFF = Backoff(0.2, 1.0)
BACKLOG_PAGE = 1000

Event = tuple[int, bytes]
"""(position, the encoded SSE event)."""


def encode_event(position: int, items: list[dict[str, Any]]) -> bytes:
    data = json.dumps({"position": position, "items": items}, separators=(",", ":"))
    return f"id: {position}\nevent: changes\ndata: {data}\n\n".encode()


def encode_changes(changes: list[Change], user: str) -> list[Event]:
    return [
        (position, encode_event(position, [item_json(c, user) for c in group]))
        for position, group in group_by_position(changes)
    ]


class TooManyStreams(Exception):
    pass


class HubClosed(Exception):
    pass


class Subscriber:
    """One open stream: what the hub hands it, read on the event loop."""

    def __init__(self, user: str, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self.user = user
        self.loop = loop
        self.capacity = capacity
        self.events: deque[Event] = deque()
        self.ready = asyncio.Event()
        self.closed = False
        self.overflowed = False
        # The hub's own state for this stream (its thread alone touches these).
        self.visible: set[UUID] | None = None
        self.first: int | None = None
        """Where the first range the hub handled for this stream began: events cover
        every position after it."""

    def offer(self, events: list[Event]) -> None:
        """On the event loop: queue the hub's events, or cut off a stream that lags."""
        if self.closed:
            return
        if len(self.events) + len(events) > self.capacity:
            self.overflowed = True
            self.closed = True
        else:
            self.events.extend(events)
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()


class StreamHub:
    """Reads each committed range once and fans it out to the open streams."""

    def __init__(
        self,
        database_url: str,
        queries: ChangeQueries,
        *,
        max_per_user: int,
        queue_max: int,
    ) -> None:
        self.database_url = database_url
        self.queries = queries
        self.max_per_user = max_per_user
        self.queue_max = queue_max
        self.position: int | None = None
        self.rounds = 0
        self._subscribers: set[Subscriber] = set()
        self._per_user: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="stream-hub", daemon=True)

    # ---- life -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close_streams(self) -> None:
        """End every stream and refuse new ones (shutdown has begun). Thread-safe."""
        with self._lock:
            self._closing = True
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            with suppress(RuntimeError):  # its loop has closed
                subscriber.loop.call_soon_threadsafe(subscriber.close)

    def stop(self) -> None:
        self.close_streams()
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def positions_changed(self, positions: Mapping[str, int]) -> None:
        """From the position watcher's thread: the todos view may have moved. With no
        stream open there is nothing to do (a first stream starts the hub's position)."""
        if not self._subscribers:
            return
        if self.position is None or positions.get("todos", 0) > self.position:
            self._wake.set()

    # ---- streams ----------------------------------------------------------------------

    def subscribe(self, user: str) -> Subscriber:
        subscriber = Subscriber(user, asyncio.get_running_loop(), self.queue_max)
        with self._lock:
            if self._closing:
                raise HubClosed
            if self._per_user.get(user, 0) >= self.max_per_user:
                raise TooManyStreams
            self._per_user[user] = self._per_user.get(user, 0) + 1
            self._subscribers.add(subscriber)
        self._wake.set()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.discard(subscriber)
                left = self._per_user.pop(subscriber.user) - 1
                if left:
                    self._per_user[subscriber.user] = left

    def open_streams(self) -> int:
        with self._lock:
            return len(self._subscribers)

    # ---- the hub's thread -------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.database_url, autocommit=True, connect_timeout=5, row_factory=dict_row
                ) as conn:
                    failures = 0
                    while not self._stop.is_set():
                        self._round(conn)
                        self._wake.wait()
                        self._wake.clear()
            except psycopg.Error as e:
                log.warning("stream hub lost its connection: %s", e)
                failures += 1
                self._stop.wait(RECONNECT_BACKOFF.delay(failures))

    def _round(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        """Read what was committed since the last round and hand it out."""
        with self._lock:
            subscribers = [s for s in self._subscribers if not s.closed]
        if not subscribers:
            self.position = None  # idle: no reads until a stream opens
            return
        if self.position is None:
            self.position = self.queries.position(conn)
            return
        since = self.position
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            data = self.queries.read_range(conn, since)
            for s in subscribers:
                if s.visible is None:
                    s.visible = self.queries.visible(conn, s.user)
                    s.first = since
        self.rounds += 1
        for s in subscribers:
            assert s.visible is not None
            before = s.visible
            s.visible = visible_after(s.user, before, data)
            changes = changes_for(s.user, data, s.visible, before)
            if changes:
                events = encode_changes(changes, s.user)
                with suppress(RuntimeError):
                    s.loop.call_soon_threadsafe(s.offer, events)
        self.position = data.position


# ---- the endpoint ---------------------------------------------------------------------


def _last_event_id(value: str | None) -> int | None:
    return parse_position(value, "Last-Event-ID", "bad-last-event-id")


def _backlog(
    queries: ChangeQueries, connect: ConnectionFactory, user: str, since: int
) -> tuple[list[Event], int]:
    """Every change after ``since``, encoded, and the position it reaches."""
    events: list[Event] = []
    after = None
    while True:
        try:
            page = read_delta(queries, connect, user, since, after, BACKLOG_PAGE)
        except TokenAhead as ahead:
            # The client has seen positions the read model has yet to reach: nothing to
            # send until it does (the live tail sends what comes after ``since``).
            return [], max(since, ahead.position)
        events += encode_changes(page.changes, user)
        if not page.more:
            return _merge(events), page.position
        after = (page.changes[-1].key[0], page.changes[-1].key[1], page.changes[-1].key[2])


def _merge(events: list[Event]) -> list[Event]:
    """One event per position even when a position spans two pages."""
    merged: list[Event] = []
    for position, encoded in events:
        if merged and merged[-1][0] == position:
            head = json.loads(merged[-1][1].split(b"data: ", 1)[1])
            tail = json.loads(encoded.split(b"data: ", 1)[1])
            merged[-1] = (position, encode_event(position, head["items"] + tail["items"]))
        else:
            merged.append((position, encoded))
    return merged


def _current_position(queries: ChangeQueries, connect: ConnectionFactory) -> int:
    with connect() as conn:
        return queries.position(conn)


HEARTBEAT = b": heartbeat\n\n"


async def _events(
    request: Request,
    hub: StreamHub,
    subscriber: Subscriber,
    connect: ConnectionFactory,
    since: int | None,
    heartbeat: float,
) -> AsyncIterator[bytes]:
    queries = hub.queries
    user = subscriber.user
    try:
        yield b"retry: 1000\n\n"
        if since is None:
            sent = await run_in_threadpool(_current_position, queries, connect)
            yield f": live from position {sent}\n\n".encode()
        else:
            backlog, sent = await run_in_threadpool(_backlog, queries, connect, user, since)
            for _, encoded in backlog:
                yield encoded
        gap_checked = False
        while True:
            if not subscriber.events and not subscriber.closed:
                subscriber.ready.clear()
                try:
                    await asyncio.wait_for(subscriber.ready.wait(), heartbeat)
                except TimeoutError:
                    yield HEARTBEAT
                    continue
            if subscriber.closed and (subscriber.overflowed or not subscriber.events):
                return
            if not gap_checked and subscriber.first is not None:
                gap_checked = True
                if subscriber.first > sent:
                    # The hub took this stream on after the position it was sent up to.
                    more, reached = await run_in_threadpool(_backlog, queries, connect, user, sent)
                    for _, encoded in more:
                        yield encoded
                    sent = max(sent, reached)
            while subscriber.events:
                position, encoded = subscriber.events.popleft()
                if position > sent:
                    sent = position
                    yield encoded
    finally:
        hub.unsubscribe(subscriber)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events, one per log position (`id:`), `event: "
            "changes`, `data:` a JSON object with `position` and `items` (the items of "
            "`GET /v1/sync`); comment lines as heartbeats.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problem_responses(
            400,
            401,
            422,
            429,
            503,
            described={
                400: "Malformed Last-Event-ID (`bad-last-event-id`).",
                429: "Rate limit reached, or too many open streams for this user "
                "(`too-many-streams`); see Retry-After.",
                503: "The server is shutting down (`unavailable`), or the database is "
                "unreachable; see Retry-After.",
            },
        ),
    },
)
async def stream(
    request: Request,
    user: CurrentUser,
    connect: Connect,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this log position (the `id:` of the last event seen).",
        ),
        WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_POSITION}),
    ] = None,
) -> StreamingResponse:
    """The caller's changes as they are committed (Server-Sent Events)."""
    since = _last_event_id(last_event_id)
    hub: StreamHub = request.app.state.stream_hub
    try:
        subscriber = hub.subscribe(user.id)
    except TooManyStreams:
        raise Problem(
            429,
            "Too many streams",
            f"at most {hub.max_per_user} streams may be open at once per user",
            type_="too-many-streams",
            headers={"Retry-After": "5"},
        ) from None
    except HubClosed:
        raise Problem(
            503,
            "Shutting down",
            "the server is shutting down; reconnect",
            type_="unavailable",
            headers={"Retry-After": "1"},
        ) from None
    heartbeat: float = request.app.state.stream_heartbeat_seconds
    return StreamingResponse(
        _events(request, hub, subscriber, connect, since, heartbeat),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def watch_shutdown_signals(hub: StreamHub) -> Callable[[], None]:
    """End the streams as soon as the server is told to stop (uvicorn only runs the
    lifespan's end after open responses finish, which a stream never does on its own).
    Wraps the SIGTERM/SIGINT handlers uvicorn installed; returns what undoes it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    originals: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        original = signal.getsignal(sig)
        if not callable(original):
            continue

        def handler(signum: int, frame: Any, original: Any = original) -> None:
            # Not here: the handler may interrupt the loop's thread inside the hub's lock.
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(hub.close_streams)
            original(signum, frame)

        originals[sig] = original
        signal.signal(sig, handler)

    def undo() -> None:
        for sig, original in originals.items():
            with suppress(ValueError):
                signal.signal(sig, original)

    return undo
