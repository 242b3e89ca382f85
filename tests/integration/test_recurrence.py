"""Recurring todos over HTTP (issue #11): RFC 5545 RRULEs (python-dateutil), a month of
completions, COUNT running out, and invalid rules refused with 422."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import PROBLEM, create_todo


def complete(client: TestClient, headers: dict[str, str], todo_id: str) -> Any:
    r = client.post(f"/v1/todos/{todo_id}/complete", headers=headers)
    assert r.status_code == 200, r.text
    return r


def test_a_month_of_daily_completions(client: TestClient, headers: dict[str, str]) -> None:
    start = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    todo = create_todo(
        client, headers, title="Water plants", due=start.isoformat(), recurrence="freq=daily"
    ).json()
    assert todo["recurrence"] == "FREQ=DAILY"
    url = f"/v1/todos/{todo['id']}"
    for day in range(1, 32):
        r = complete(client, headers, todo["id"])
        body = r.json()
        assert body["status"] == "open"
        assert body["due"] == (start + timedelta(days=day)).isoformat().replace("+00:00", "Z")
        assert body["completions"] == day
        assert body["completed_at"] is not None
    events = client.get(f"{url}/events", headers=headers).json()
    completions = [e for e in events if e["type"] == "todos.task.completed"]
    assert len(completions) == 31
    assert [e["data"]["next_due"][:10] for e in completions][:2] == ["2030-01-02", "2030-01-03"]
    assert completions[-1]["data"]["next_due"][:10] == "2030-02-01"
    # The read model follows.
    got = client.get(url, headers={"X-Min-Position": r.headers["X-Position"], **headers})
    assert got.status_code == 200, got.text
    assert (got.json()["due"], got.json()["completions"], got.json()["status"]) == (
        "2030-02-01T09:00:00Z",
        31,
        "open",
    )
    # Time travel: the state after the first completion.
    first = client.get(url, params={"as_of_version": 2}, headers=headers).json()
    assert (first["due"], first["completions"]) == ("2030-01-02T09:00:00Z", 1)


def test_weekly_byday_rolls_to_the_next_named_day(
    client: TestClient, headers: dict[str, str]
) -> None:
    monday = "2030-01-07T08:00:00Z"
    todo = create_todo(
        client, headers, title="Gym", due=monday, recurrence="RRULE:FREQ=WEEKLY;BYDAY=MO,TH"
    ).json()
    assert todo["recurrence"] == "FREQ=WEEKLY;BYDAY=MO,TH"
    dues = [complete(client, headers, todo["id"]).json()["due"][:10] for _ in range(8)]
    assert dues == [
        "2030-01-10",
        "2030-01-14",
        "2030-01-17",
        "2030-01-21",
        "2030-01-24",
        "2030-01-28",
        "2030-01-31",
        "2030-02-04",
    ]


def test_count_runs_out_and_the_todo_completes_for_good(
    client: TestClient, headers: dict[str, str]
) -> None:
    todo = create_todo(
        client,
        headers,
        title="Three times",
        due="2030-03-01T00:00:00Z",
        recurrence="FREQ=DAILY;COUNT=3",
    ).json()
    first, second, last = (complete(client, headers, todo["id"]).json() for _ in range(3))
    assert (first["status"], first["due"][:10]) == ("open", "2030-03-02")
    assert (second["status"], second["due"][:10]) == ("open", "2030-03-03")
    assert (last["status"], last["due"][:10]) == ("completed", "2030-03-03")
    again = client.post(f"/v1/todos/{todo['id']}/complete", headers=headers)
    assert again.json()["version"] == last["version"]
    events = client.get(f"/v1/todos/{todo['id']}/events", headers=headers).json()
    assert [e["data"]["next_due"] for e in events if e["type"] == "todos.task.completed"][
        -1
    ] is None


def test_a_late_completion_skips_the_missed_occurrences(
    client: TestClient, headers: dict[str, str]
) -> None:
    todo = create_todo(
        client, headers, title="Late", due="2020-01-01T12:00:00Z", recurrence="FREQ=DAILY"
    ).json()
    rolled = complete(client, headers, todo["id"]).json()
    due = datetime.fromisoformat(rolled["due"])
    now = datetime.now(UTC)
    assert now < due <= now + timedelta(days=1)
    assert (due.hour, due.minute) == (12, 0)


def test_setting_changing_and_clearing_a_rule(client: TestClient, headers: dict[str, str]) -> None:
    todo = create_todo(client, headers, title="Later recurring").json()
    url = f"/v1/todos/{todo['id']}"
    needs_due = client.patch(url, json={"recurrence": "FREQ=DAILY"}, headers=headers)
    assert needs_due.status_code == 422
    both = client.patch(
        url, json={"due": "2030-05-01T10:00:00Z", "recurrence": "FREQ=MONTHLY"}, headers=headers
    )
    assert both.status_code == 200, both.text
    assert both.json()["recurrence"] == "FREQ=MONTHLY"
    # The due date of a recurring todo cannot be cleared while the rule stands...
    assert client.patch(url, json={"due": None}, headers=headers).status_code == 422
    # ...but both at once can.
    cleared = client.patch(url, json={"due": None, "recurrence": None}, headers=headers)
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["due"], cleared.json()["recurrence"]) == (None, None)
    types = [e["type"] for e in client.get(f"{url}/events", headers=headers).json()]
    assert types[-2:] == ["todos.task.recurrence_cleared", "todos.task.due_date_cleared"]
    assert "todos.task.recurrence_set" in types
    done = complete(client, headers, todo["id"]).json()
    assert done["status"] == "completed"


def test_invalid_rules_are_422(client: TestClient, headers: dict[str, str]) -> None:
    due = "2030-01-01T00:00:00Z"
    for rule in [
        "",
        "garbage",
        "FREQ=HOURLY",
        "FREQ=SECONDLY",
        "FREQ=DAILY;BYHOUR=9",
        "FREQ=DAILY;INTERVAL=0",
        "FREQ=DAILY;COUNT=0",
        "FREQ=DAILY;FREQ=WEEKLY",
        "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
        "FREQ=YEARLY;UNTIL=20200101T000000Z",
        "FREQ=WEEKLY;BYDAY=XX",
        "FREQ=DAILY\x00",
        "FREQ=DAILY;" + "X" * 300,
    ]:
        r = client.post(
            "/v1/todos", json={"title": "bad", "due": due, "recurrence": rule}, headers=headers
        )
        assert r.status_code == 422, (rule, r.text)
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["type"].endswith("/validation")
    no_due = client.post(
        "/v1/todos", json={"title": "x", "recurrence": "FREQ=DAILY"}, headers=headers
    )
    assert no_due.status_code == 422
