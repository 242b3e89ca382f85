"""The directory `todo serve --workers N` shares between its workers' metrics: made and
removed by the parent, emptied when given, and cleared of dead workers' live figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tododb.api.metrics import SHARED_DIR_VARIABLE, forget_dead_workers, shared_between_workers


def test_workers_get_a_directory_of_their_own_removed_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SHARED_DIR_VARIABLE, raising=False)
    with shared_between_workers(2) as made:
        assert made is not None
        assert os.environ[SHARED_DIR_VARIABLE] == made  # inherited by the workers
        assert Path(made).is_dir()
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
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(gone.stdout)
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
