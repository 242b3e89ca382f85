"""The live stream (issue #12) on a real `todo serve`: events in order with their log
positions as ids, a reconnect with Last-Event-ID mid-burst that misses and repeats
nothing, the per-user cap (429), heartbeats, and a clean end when the server stops.

The projections run in this process (the session's worker) on the same database.
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PROBLEM
from tests.servers import serving

Auth = Callable[..., dict[str, str]]


@dataclass
class Event:
    id: str | None = None
    event: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        import json

        return json.loads(self.data)


def events(response: httpx.Response) -> Iterator[Event]:
    """Server-Sent Events as they arrive (comment-only blocks too: heartbeats)."""
    current = Event()
    for line in response.iter_lines():
        if line == "":
            if current.data or current.comments or current.id:
                yield current
            current = Event()
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                current.id = value
            elif name == "event":
                current.event = value
            elif name == "data":
                current.data += value


@pytest.fixture
def server(
    database_url: str, projection_worker: threading.Event, tmp_path: Path
) -> Iterator[tuple[str, Any]]:
    with serving(
        database_url,
        tmp_path,
        stream_heartbeat_seconds="0.5",
        stream_max_per_user="2",
        stream_queue_max="10000",
    ) as (base, proc):
        yield base, proc


def _user() -> str:
    return f"streamer-{uuid.uuid4().hex[:8]}"


def test_events_arrive_in_order_with_their_positions(server: tuple[str, Any], auth: Auth) -> None:
    base, _ = server
    user = _user()
    headers = auth(user)
    with (
        httpx.Client(base_url=base, timeout=15) as http,
        http.stream("GET", "/v1/stream", headers=headers) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        positions = []
        titles = [f"t{i}" for i in range(5)]
        for title in titles:
            r = http.post("/v1/todos", json={"title": title}, headers=headers)
            assert r.status_code == 201
            positions.append(int(r.headers["X-Position"]))
        seen: list[int] = []
        got: list[str] = []
        for event in events(stream):
            if event.id is None:
                continue
            body = event.json()
            assert event.event == "changes"
            assert int(event.id) == body["position"]
            assert all(i["position"] == body["position"] for i in body["items"])
            seen.append(body["position"])
            got += [i["todo"]["title"] for i in body["items"] if i["kind"] == "todo"]
            if body["position"] >= positions[-1]:
                break
    assert seen == sorted(set(seen))
    assert got == titles
    assert set(positions) <= set(seen)


def test_a_reconnect_mid_burst_misses_and_repeats_nothing(
    server: tuple[str, Any], auth: Auth
) -> None:
    base, _ = server
    user = _user()
    headers = auth(user)
    http = httpx.Client(base_url=base, timeout=15)
    lists = [
        http.post("/v1/lists", json={"name": f"l{i}"}, headers=headers).json()["id"]
        for i in range(2)
    ]
    last = {"position": 0}
    ids: list[str] = []

    def burst() -> None:
        for i in range(60):
            r = http.post(
                "/v1/todos", json={"title": f"b{i}", "list_id": lists[i % 2]}, headers=headers
            )
            if i % 3 == 0:
                http.patch(f"/v1/todos/{r.json()['id']}", json={"title": f"c{i}"}, headers=headers)
            if i % 7 == 0:
                r = http.delete(f"/v1/todos/{r.json()['id']}", headers=headers)
        http.delete(f"/v1/lists/{lists[1]}", headers=headers)
        # The deleted list's todos are deleted after it, out of the user's sight: the
        # last event the stream will show is this one.
        r = http.post("/v1/todos", json={"title": "last"}, headers=headers)
        last["position"] = int(r.headers["X-Position"])

    replica_todos: dict[str, Any] = {}
    received: list[int] = []

    def apply(event: Event) -> None:
        body = event.json()
        received.append(body["position"])
        for item in body["items"]:
            if item["kind"] != "todo":
                continue
            if item["op"] == "upsert":
                replica_todos[item["id"]] = item["todo"]
            else:
                replica_todos.pop(item["id"], None)

    writer = threading.Thread(target=burst)
    with http.stream("GET", "/v1/stream", headers=headers) as stream:
        writer.start()
        for event in events(stream):
            if event.id is not None:
                ids.append(event.id)
                apply(event)
                if len(ids) == 10:
                    break  # disconnect in the middle of the burst
    resume = ids[-1]
    writer.join()
    final = last["position"]
    assert final > 0
    with http.stream("GET", "/v1/stream", headers={**headers, "Last-Event-ID": resume}) as stream:
        for event in events(stream):
            if event.id is not None:
                ids.append(event.id)
                apply(event)
                if int(event.id) >= final:
                    break
    positions = [int(i) for i in ids]
    assert positions == sorted(set(positions)), "an event repeated or out of order"
    truth = http.get(
        "/v1/todos", params={"limit": 200}, headers={**headers, "X-Min-Position": str(final)}
    ).json()["items"]
    assert replica_todos == {t["id"]: t for t in truth}
    http.close()


def test_the_per_user_cap_answers_429(server: tuple[str, Any], auth: Auth) -> None:
    base, _ = server
    headers = auth(_user())
    with (
        httpx.Client(base_url=base, timeout=15) as http,
        http.stream("GET", "/v1/stream", headers=headers) as one,
        http.stream("GET", "/v1/stream", headers=headers) as two,
    ):
        assert one.status_code == two.status_code == 200
        r = http.get("/v1/stream", headers=headers)
        assert r.status_code == 429
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.json()["type"].endswith("/too-many-streams")
        assert "Retry-After" in r.headers
        other = http.get("/v1/sync", headers=auth(_user()))  # others are not affected
        assert other.status_code == 200


def test_a_bad_last_event_id_is_400(server: tuple[str, Any], auth: Auth) -> None:
    base, _ = server
    r = httpx.get(f"{base}/v1/stream", headers={**auth(_user()), "Last-Event-ID": "x1"})
    assert r.status_code == 400
    assert r.json()["type"].endswith("/bad-last-event-id")


def test_an_idle_stream_gets_heartbeats(server: tuple[str, Any], auth: Auth) -> None:
    base, _ = server
    with (
        httpx.Client(base_url=base, timeout=15) as http,
        http.stream("GET", "/v1/stream", headers=auth(_user())) as stream,
    ):
        beats = 0
        for event in events(stream):
            beats += event.comments.count("heartbeat")
            if beats >= 2:
                break
    assert beats >= 2


def test_shutdown_ends_open_streams_cleanly(server: tuple[str, Any], auth: Auth) -> None:
    base, proc = server
    ended = threading.Event()
    error: list[BaseException] = []

    def listen() -> None:
        try:
            with (
                httpx.Client(base_url=base, timeout=30) as http,
                http.stream("GET", "/v1/stream", headers=auth(_user())) as stream,
            ):
                started.set()
                for _ in events(stream):
                    pass
            ended.set()  # the body ended properly (the final chunk came)
        except BaseException as e:
            error.append(e)

    started = threading.Event()
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert started.wait(15)
    proc.terminate()
    listener.join(timeout=10)
    assert not error, error
    assert ended.is_set()
    # uvicorn re-raises the signal it shut down on, once the shutdown is done.
    assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
