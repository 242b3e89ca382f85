"""The analytics service's tables: their DDL, and the figures the API may read.

The schema belongs to the analytics service; the API reads it only through
``AnalyticsStore``, handed to it by the composition root.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from tododb.consumers.ddl import apply_ddl, inbox_ddl
from tododb.infra.postgres import ConnectionFactory

SCHEMA = "analytics"

DDL = (
    "CREATE SCHEMA IF NOT EXISTS analytics",
    inbox_ddl(SCHEMA),
    "CREATE TABLE IF NOT EXISTS analytics.daily ("
    "owner text NOT NULL, day date NOT NULL, "
    "created integer NOT NULL DEFAULT 0, completed integer NOT NULL DEFAULT 0, "
    "reopened integer NOT NULL DEFAULT 0, deleted integer NOT NULL DEFAULT 0, "
    "completion_seconds_total double precision NOT NULL DEFAULT 0, "
    "completions_timed integer NOT NULL DEFAULT 0, "
    "PRIMARY KEY (owner, day))",
    # When each todo was created, to time its completions.
    "CREATE TABLE IF NOT EXISTS analytics.todos ("
    "todo_id uuid PRIMARY KEY, owner text NOT NULL, created_at timestamptz NOT NULL)",
    # Per actor (the user whose command caused the event), per day and event type: every
    # published type, task and list alike, and types of later contract versions too.
    "CREATE TABLE IF NOT EXISTS analytics.actor_daily ("
    "actor text NOT NULL, day date NOT NULL, type text NOT NULL, "
    "events integer NOT NULL DEFAULT 0, PRIMARY KEY (actor, day, type))",
)


class AnalyticsStore:
    """The figures the API serves, read through the service's own module: per owner (of
    the todos) and day, and per actor (who did it), day and event type."""

    def __init__(self, connect: ConnectionFactory) -> None:
        self.connect = connect

    def create_schema(self) -> None:
        with self.connect() as conn:
            apply_ddl(conn, SCHEMA, DDL)

    def daily_figures(self, owner: str, start: date, end: date) -> list[dict[str, Any]]:
        """The owner's figures per day in [start, end], days without activity left out."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT day, created, completed, reopened, deleted, "
                "completion_seconds_total, completions_timed FROM analytics.daily "
                "WHERE owner = %s AND day BETWEEN %s AND %s ORDER BY day",
                (owner, start, end),
            ).fetchall()
        return [_day(row) for row in rows]

    def actor_figures(self, actor: str, start: date, end: date) -> list[dict[str, Any]]:
        """What ``actor`` did per day in [start, end]: events by type, days without any
        left out (``{"day": "2030-01-01", "events": {"todos.task.created": 2, ...}}``)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT day, type, events FROM analytics.actor_daily "
                "WHERE actor = %s AND day BETWEEN %s AND %s ORDER BY day, type",
                (actor, start, end),
            ).fetchall()
        days: dict[date, dict[str, int]] = {}
        for row in rows:
            days.setdefault(row["day"], {})[row["type"]] = row["events"]
        return [{"day": day.isoformat(), "events": events} for day, events in days.items()]

    def actor_totals(self, actor: str, start: date, end: date) -> dict[str, int]:
        """What ``actor`` did in [start, end]: events by type."""
        totals: dict[str, int] = {}
        for day in self.actor_figures(actor, start, end):
            for type_, n in day["events"].items():
                totals[type_] = totals.get(type_, 0) + n
        return totals


def _day(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "day": row["day"].isoformat(),
        "created": row["created"],
        "completed": row["completed"],
        "reopened": row["reopened"],
        "deleted": row["deleted"],
        "mean_completion_seconds": (
            row["completion_seconds_total"] / row["completions_timed"]
            if row["completions_timed"]
            else None
        ),
    }


def today() -> date:
    return datetime.now(UTC).date()
