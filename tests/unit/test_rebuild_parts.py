"""The rebuild's pieces that need no database, and the boundaries the refactor drew."""

from __future__ import annotations

import ast
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tododb.projections import rebuild as rebuild_module
from tododb.projections.admin import ProjectionsAdmin, UnknownProjection
from tododb.projections.rebuild import (
    PARALLEL_FROM,
    PartitionJob,
    RebuildResult,
    _read_ahead,
    _replay_partition,
    default_partitions,
)
from tododb.projections.registry import ReadSide

PACKAGE = Path(__file__).resolve().parents[2] / "tododb"


def job(partition: int = 1) -> PartitionJob:
    return PartitionJob(
        database_url="postgresql://u@h/db",
        env={"PERSISTENCE_MODULE": "eventsourcing.postgres"},
        schema="readmodels",
        kind="todos",
        generation=3,
        after=10,
        until=900,
        batch_size=37,
        partition=partition,
        partitions=4,
    )


def test_a_partition_job_and_its_function_survive_pickling_for_a_spawned_process() -> None:
    assert pickle.loads(pickle.dumps(job())) == job()
    assert pickle.loads(pickle.dumps(_replay_partition)) is _replay_partition


def test_each_partition_tracks_its_own_position() -> None:
    assert job(0).tracking_name == "todos#0"
    assert job(3).tracking_name == "todos#3"


def test_small_backlogs_replay_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rebuild_module.os, "cpu_count", lambda: 16)
    assert default_partitions(0) == 1
    assert default_partitions(PARALLEL_FROM - 1) == 1
    assert default_partitions(PARALLEL_FROM) == 4
    monkeypatch.setattr(rebuild_module.os, "cpu_count", lambda: None)
    assert default_partitions(PARALLEL_FROM * 10) == 1


def test_rate_of_an_instant_rebuild_is_zero_not_an_error() -> None:
    assert RebuildResult("id", "todos", 2, 0, 0.0, 0).events_per_second == 0.0
    assert RebuildResult("id", "todos", 2, 100, 4.0, 100).events_per_second == 25.0


@dataclass
class Notification:
    id: int


@dataclass
class FakeRecorder:
    ids: list[int]
    fail_after: int | None = None
    reads: list[int] = field(default_factory=list)

    def select_notifications(self, start: int, limit: int) -> list[Notification]:
        self.reads.append(start)
        if self.fail_after is not None and start > self.fail_after:
            raise RuntimeError("connection lost")
        return [Notification(i) for i in self.ids if i >= start][:limit]

    def max_notification_id(self) -> int | None:
        return max(self.ids, default=None)


class FakeMapper:
    def to_domain_event(self, n: Notification) -> str:
        return f"event-{n.id}"


@dataclass
class FakeApp:
    recorder: FakeRecorder
    mapper: FakeMapper = field(default_factory=FakeMapper)


def pages(app: FakeApp, after: int, size: int) -> list[list[tuple[Any, int]]]:
    return list(_read_ahead(app, after, size))  # type: ignore[arg-type]


def test_read_ahead_yields_the_log_after_a_position_in_pages_until_the_head() -> None:
    app = FakeApp(FakeRecorder([1, 2, 4, 5, 7, 8, 9]))  # ids have gaps
    assert pages(app, 2, 3) == [
        [("event-4", 4), ("event-5", 5), ("event-7", 7)],
        [("event-8", 8), ("event-9", 9)],
    ]
    assert pages(app, 9, 3) == []


def test_read_ahead_raises_what_stopped_its_reader() -> None:
    app = FakeApp(FakeRecorder(list(range(1, 20)), fail_after=5))
    with pytest.raises(RuntimeError, match="connection lost"):
        pages(app, 0, 5)


def test_read_ahead_stops_its_reader_when_the_consumer_stops_early() -> None:
    app = FakeApp(FakeRecorder(list(range(1, 10_001))))
    reader = _read_ahead(app, 0, 10)  # type: ignore[arg-type]
    assert next(reader)[0] == ("event-1", 1)
    reader.close()
    assert len(app.recorder.reads) < 100


def test_an_unknown_projection_is_refused_before_the_database_is_touched() -> None:
    admin = ProjectionsAdmin(ReadSide("postgresql://nobody@127.0.0.1:1/none", {}), lambda: 0)
    with pytest.raises(UnknownProjection):
        admin.start_rebuild("nope")
    assert admin.KINDS == ("todos", "stats")


def test_only_the_rebuild_log_has_sql_on_the_rebuilds_table() -> None:
    statement = re.compile(r"\{[0-9]*\}\.rebuilds\b|readmodels\.rebuilds\b")
    holders = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if statement.search(p.read_text())
    }
    assert holders == {"projections/rebuild_log.py"}


def test_the_admin_api_knows_the_read_side_only_through_its_facade() -> None:
    tree = ast.parse((PACKAGE / "api" / "admin.py").read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    imported |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert {m for m in imported if m.startswith(("tododb.projections", "tododb.infra"))} == {
        "tododb.projections.admin"
    }
