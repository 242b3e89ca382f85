"""The directory `todo serve --workers N` shares between its workers' metrics: made and
removed by the parent, emptied when given, and cleared of dead workers' live figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tododb.api.metrics import (
    SHARED_DIR_VARIABLE,
    SharedFigures,
    forget_dead_workers,
    remove_orphans,
    shared_between_workers,
)


def _dead_pid() -> int:
    """The id of a process that has exited."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(gone.stdout)


def test_workers_get_a_directory_of_their_own_removed_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SHARED_DIR_VARIABLE, raising=False)
    with shared_between_workers(2) as made:
        assert made is not None
        assert os.environ[SHARED_DIR_VARIABLE] == made  # inherited by the workers
        assert Path(made).is_dir()
        assert Path(made).name.startswith(f"tododb-metrics-{os.getpid()}-")
        (Path(made) / "counter_1.db").write_bytes(b"x")
    assert SHARED_DIR_VARIABLE not in os.environ
    assert not Path(made).exists()


def test_one_process_shares_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SHARED_DIR_VARIABLE, raising=False)
    with shared_between_workers(1) as made:
        assert made is None
        assert SHARED_DIR_VARIABLE not in os.environ


@pytest.mark.parametrize("workers", [1, 3])
def test_a_given_directory_is_emptied_of_an_earlier_run(
    workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"old counts")
    (given / "notes.txt").write_text("not ours")
    monkeypatch.setenv(SHARED_DIR_VARIABLE, str(given))
    with shared_between_workers(workers) as used:
        assert used == str(given)
        assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
    assert given.is_dir()  # the operator's directory stays


def test_a_dead_workers_live_figures_go_and_its_counts_stay(tmp_path: Path) -> None:
    dead = _dead_pid()
    me = os.getpid()
    for name in (
        f"gauge_livesum_{dead}.db",
        f"gauge_liveall_{dead}.db",
        f"counter_{dead}.db",
        f"histogram_{dead}.db",
        f"gauge_livesum_{me}.db",
    ):
        (tmp_path / name).write_bytes(b"")
    forget_dead_workers(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead}.db", f"histogram_{dead}.db", f"gauge_livesum_{me}.db"]
    )


def test_directories_of_killed_serves_are_removed_and_others_kept(tmp_path: Path) -> None:
    """A `todo serve` killed with -9 cannot remove its directory; the next one does,
    unless a process still writes there (a worker outliving its maker)."""
    dead = _dead_pid()
    orphan = tmp_path / f"tododb-metrics-{dead}-abc_12"
    in_use = tmp_path / f"tododb-metrics-{dead}-def"
    running = tmp_path / f"tododb-metrics-{os.getpid()}-xyz"
    unrelated = tmp_path / "tododb-metrics-notes"
    for path in (orphan, in_use, running, unrelated):
        path.mkdir()
    (orphan / f"counter_{dead}.db").write_bytes(b"")
    (in_use / f"counter_{dead}.db").write_bytes(b"")
    (in_use / f"gauge_livesum_{os.getpid()}.db").write_bytes(b"")
    remove_orphans(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [in_use.name, running.name, unrelated.name]
    )


def test_a_worker_stopping_publishes_its_counts_and_leaves_the_live_sums(
    tmp_path: Path,
) -> None:
    """As uvicorn retires a worker while its replacement runs (SIGHUP): the replacement
    cannot tell it is gone, so the worker takes its figures of the moment out itself."""
    live = tmp_path / f"gauge_livesum_{os.getpid()}.db"
    live.write_bytes(b"")
    asked: list[int] = []

    def figures() -> dict[str, float]:
        asked.append(1)
        return {"batches": 2.0, "commands": 6.0, "seconds": 0.5, "queued": 0.0}

    SharedFigures(figures, str(tmp_path), interval=3600).stop()
    assert asked == [1]  # the last figures published
    assert not live.exists()


PUBLISHING_WORKER = """
import os, sys
from tododb.api.metrics import SharedFigures
figures = {"batches": 2.0, "commands": 6.0, "seconds": 0.5, "queued": 3.0, "read_waits": 1.0}
shared = SharedFigures(lambda: figures, sys.argv[1], interval=3600)
shared.publish()
assert os.path.exists(os.path.join(sys.argv[1], f"gauge_livesum_{os.getpid()}.db"))
figures.update(batches=3.0, commands=10.0, queued=0.0)
shared.stop()
print(os.getpid())
"""


def test_a_worker_publishes_into_the_shared_files_and_its_live_figures_leave_on_stop(
    tmp_path: Path,
) -> None:
    """In a process of its own, in multiprocess mode as a worker is (the mode is chosen
    when prometheus_client is imported): counts by their increase, and on stop the last
    counts in, the figures of the moment out."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    env = {**os.environ, SHARED_DIR_VARIABLE: str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", PUBLISHING_WORKER, str(tmp_path)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    pid = int(done.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{pid}.db"]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    samples = {s.name: s.value for m in registry.collect() for s in m.samples}
    assert samples == {
        "tododb_append_batches_total": 3.0,
        "tododb_append_commands_total": 10.0,
        "tododb_append_batch_seconds_total": 0.5,
    }
