"""A mixed workload on the whole write path, beside raw single-row commits.

    python bench/workload.py [--seconds 60] [--rate 300] [--writers 16 64] [--processes 2]
                             [--todos 10000] [--zipf 0.99]

Modelled on the pyeventsourcing event store benchmarks (a zipf-distributed stream choice
over 10,000 streams, fixed-rate and saturation runs, latency percentiles): 10,000 todos
are stored first; then commands go through the application layer, each on a todo picked
by a Zipf distribution over the 10,000 (exponent 0.99, YCSB's: a few hot todos take
most of the writes and race each other, a lost race being retried by the application),
in a mix of 15% creates (a new todo takes the picked todo's place), 50% updates
(a title change), 25% completes (or reopens, alternately) and 10% deletes (a command
meeting a deleted todo creates its replacement instead). Meanwhile the projection worker
(`todo projections run`) and the relay (`todo relay run`, to a Tansu broker,
``TODO_KAFKA_IDEMPOTENCE=false``) run as processes of their own, as deployed.

For 16 and 64 concurrent writers, twice: at a fixed offered rate (``--rate``, an open
loop: latency counts from when a command was due, so a writer falling behind shows) and
at saturation (a closed loop: each writer sends its next command when the last returns).
Writers are threads in ``--processes`` processes (default 2, one per core, as API workers
would be): in one process the GIL caps the application's CPU work at one core.
Reported: commands/s; latency p50/p95/p99/p99.9; conflicts retried (lost races); the
projections' and relay's lag (events) at the end of the run and the time to drain it.
Raw baseline, same run, same writers, processes and loops: single-row
``INSERT ...; COMMIT`` on a connection per writer. About ``--seconds`` of load in all.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.persistence import RecordConflictError
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_database, console, pct
from tododb.application import ConcurrencyConflict, TodoApplication, TodoGone
from tododb.devservers.tansu import TansuBroker
from tododb.domain import Status, Todo
from tododb.entrypoints.bootstrap import build_application, build_read_side
from tododb.entrypoints.supervisor import todo_command
from tododb.infra.gc_tuning import settle_after_startup
from tododb.infra.settings import Settings
from tododb.projections.registry import read_position
from tododb.relay.status import EVENTS_TABLE, read_status

MIX = (("create", 0.15), ("update", 0.50), ("complete", 0.25), ("delete", 0.10))
STATE = b'{"title": "benchmark todo", "description": "", "tags": ["a", "b"]}' * 2
NIL = bytes(16)
"""A slot whose todo was deleted and not replaced yet."""


def owner_of(slot: int) -> str:
    return f"user-{slot % 1000}"


# ---- what every writer process shares ----------------------------------------------------


@dataclass
class Shared:
    """The todos' slots, in shared memory: every process picks from the same hot todos."""

    ids: Any  # multiprocessing Array of 16-byte todo ids
    completed: Any  # multiprocessing Array of 0/1

    def get(self, slot: int) -> bytes:
        with self.ids.get_lock():
            return bytes(self.ids[slot * 16 : slot * 16 + 16])

    def put(self, slot: int, todo_id: bytes) -> None:
        with self.ids.get_lock():
            self.ids[slot * 16 : slot * 16 + 16] = todo_id


@dataclass(frozen=True)
class Phase:
    mode: str  # "app" or "raw"
    writers: int
    rate: float | None  # offered commands/s in all, None: saturation
    seconds: float


@dataclass
class Outcome:
    """One process's share of a phase."""

    latencies: array[float] = field(default_factory=lambda: array("d"))
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0
    errors: list[str] = field(default_factory=list)
    began: float = float("inf")
    """Wall clock: when the first writer started timing, and the last one finished."""
    ended: float = 0.0
    last_began: float = 0.0
    """When the last writer started timing: each should start at the same moment."""

    @property
    def rate(self) -> float:
        return len(self.latencies) / (self.ended - self.began)

    def merge(self, other: Outcome) -> None:
        self.latencies.extend(other.latencies)
        self.kinds.update(other.kinds)
        self.outcomes.update(other.outcomes)
        self.conflicts += other.conflicts
        self.errors += other.errors[: 5 - len(self.errors)]
        self.began = min(self.began, other.began)
        self.last_began = max(self.last_began, other.last_began)
        self.ended = max(self.ended, other.ended)


class Zipf:
    """Slot 0 is the hottest; P(slot k) is proportional to 1 / (k + 1) ** exponent."""

    def __init__(self, n: int, exponent: float) -> None:
        self.cumulative = list(accumulate(1 / (k + 1) ** exponent for k in range(n)))

    def pick(self, rng: random.Random) -> int:
        return bisect_left(self.cumulative, rng.random() * self.cumulative[-1])


# ---- a writer process ----------------------------------------------------------------------


def drive(
    settings: Settings, url: str, phase: Phase, share: float, threads: int, start_at: float,
    shared: Shared, zipf_exponent: float, seed: int,
) -> Outcome:  # fmt: skip
    """In a process of its own: ``threads`` writers from ``start_at`` (wall clock) for
    ``phase.seconds``, at ``share`` of the offered rate (or flat out)."""
    out = Outcome()
    lock = threading.Lock()
    if phase.mode == "app":
        command, close = app_commands(settings, url, threads, shared, zipf_exponent, out, lock)
    else:
        command, close = raw_commands(url, threads)
    settle_after_startup()  # as `todo serve` settles each API worker's collector
    rate = None if phase.rate is None else phase.rate * share
    due = itertools.count()
    try:
        run_threads(threads, seed, command, rate, start_at, phase.seconds, due, out, lock)
    finally:
        close()
    return out


Command = Callable[[random.Random], tuple[str, str]]
"""Does one command; (its kind, its outcome)."""


def run_threads(
    threads: int, seed: int, command: Command, rate: float | None, start_at: float,
    seconds: float, due: Iterator[int], out: Outcome, lock: threading.Lock,
) -> None:  # fmt: skip
    def writer(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        command(rng)  # warm-up: a connection of its own, statements prepared
        time.sleep(max(0.0, start_at - time.time()))
        with lock:
            out.began = min(out.began, time.time())
            out.last_began = max(out.last_began, time.time())
        started = time.perf_counter()
        end = started + seconds
        while True:
            if rate is None:
                begin = time.perf_counter()
            else:
                begin = started + next(due) / rate  # open loop: from when it was due
                time.sleep(max(0.0, begin - time.perf_counter()))
            if begin >= end:
                with lock:
                    out.ended = max(out.ended, time.time())
                return
            try:
                kind, outcome = command(rng)
            except Exception as e:
                kind, outcome = "?", "error"
                with lock:
                    if len(out.errors) < 5:
                        out.errors.append(f"{type(e).__name__}: {e}")
            took = time.perf_counter() - begin
            with lock:
                out.latencies.append(took)
                out.kinds[kind] += 1
                out.outcomes[outcome] += 1

    pool = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def app_commands(
    settings: Settings, url: str, threads: int, shared: Shared, zipf_exponent: float,
    out: Outcome, lock: threading.Lock,
) -> tuple[Command, Callable[[], None]]:  # fmt: skip
    app = build_application(
        settings.model_copy(update={"db_pool_size": threads, "db_pool_max_overflow": 0}), url
    )
    count_conflicts(app, out, lock)
    zipf = Zipf(len(shared.ids) // 16, zipf_exponent)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]

    def command(rng: random.Random) -> tuple[str, str]:
        slot = zipf.pick(rng)
        kind = rng.choices(kinds, weights)[0]
        todo_bytes = shared.get(slot)
        if kind == "create" or todo_bytes == NIL:
            result = app.create_todo(owner_of(slot), title=f"todo {slot}", tags=["bench"])
            shared.put(slot, result.todo.id.bytes)
            shared.completed[slot] = 0
            return "create", "recorded"
        todo_id = uuid.UUID(bytes=todo_bytes)
        try:
            if kind == "update":
                result = app.update_todo(owner_of(slot), todo_id, {"title": f"t{rng.random()}"})
            elif kind == "complete":
                act = app.reopen_todo if shared.completed[slot] else app.complete_todo
                result = act(owner_of(slot), todo_id)
                shared.completed[slot] = int(result.todo.status is Status.COMPLETED)
            else:
                result = app.delete_todo(owner_of(slot), todo_id)
                shared.put(slot, NIL)
        except TodoGone:
            return kind, "gone"  # another writer deleted it first: a 410
        except ConcurrencyConflict:
            return kind, "gave up"  # retries ran out: a 409
        return kind, "recorded" if result.recorded else "no change"

    return command, app.close


def count_conflicts(app: TodoApplication, out: Outcome, lock: threading.Lock) -> None:
    """Count the races lost in ``save`` (each one retried by the application)."""
    save = app.save

    def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            return save(*args, **kwargs)
        except RecordConflictError:
            with lock:
                out.conflicts += 1
            raise

    app.save = counted  # type: ignore[method-assign]


def raw_commands(url: str, threads: int) -> tuple[Command, Callable[[], None]]:
    """Single-row INSERT; COMMIT, each writer thread on a connection of its own."""
    local = threading.local()
    conns: list[psycopg.Connection[Any]] = []

    def command(_rng: random.Random) -> tuple[str, str]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(url)
            conns.append(conn)
        conn.execute(
            "INSERT INTO raw_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, 1, 'bench', %s)",
            (uuid.uuid4(), STATE),
        )
        conn.commit()
        return "insert", "recorded"

    def close() -> None:
        for conn in conns:
            conn.close()

    return command, close


# ---- the downstream: projections and relay -------------------------------------------------

DOWNSTREAM = ("todos view", "stats view", "relay")


class Lag:
    """Head of the log minus each follower's position, read from PostgreSQL."""

    def __init__(self, url: str, views_schema: str, events_schema: str) -> None:
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        self.views_schema = views_schema
        self.events_schema = events_schema

    def another(self) -> Lag:
        """The same, on a connection of its own (for another thread)."""
        return Lag(self.url, self.views_schema, self.events_schema)

    def head(self) -> int:
        row = self.conn.execute(
            f'SELECT max(notification_id) FROM "{self.events_schema}"."{EVENTS_TABLE}"'
        ).fetchone()
        return int(row[0] or 0) if row else 0

    def positions(self) -> dict[str, int]:
        return {
            "todos view": read_position(self.conn, self.views_schema, "todos"),
            "stats view": read_position(self.conn, self.views_schema, "stats"),
            "relay": int(read_status(self.conn, self.events_schema)["position"]),
        }

    def lags(self, head: int | None = None) -> dict[str, int]:
        head = self.head() if head is None else head
        return {name: max(0, head - p) for name, p in self.positions().items()}

    def drain(self, timeout: float = 120.0) -> dict[str, float]:
        """Seconds until each follower reaches the head as it is now (inf: not in time)."""
        head, started = self.head(), time.perf_counter()
        drained: dict[str, float] = {}
        while len(drained) < len(DOWNSTREAM) and time.perf_counter() - started < timeout:
            for name, lag in self.lags(head).items():
                if lag == 0 and name not in drained:
                    drained[name] = time.perf_counter() - started
            time.sleep(0.02)
        return {name: drained.get(name, float("inf")) for name in DOWNSTREAM}


@dataclass(frozen=True)
class Sample:
    at: float  # wall clock
    head: int
    positions: dict[str, int]


class Watch:
    """Every 50 ms, in a thread of its own: the head and each follower's position.

    Runs from before a phase until the followers have drained it, so the lag at the
    moment the load stopped and the time to drain are read off the samples, not off a
    query made after the writer processes have wound down.
    """

    def __init__(self, lag: Lag) -> None:
        self.lag = lag.another()
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(0.05):
            head = self.lag.head()
            self.samples.append(Sample(time.time(), head, self.lag.positions()))

    def until_drained(self, timeout: float = 120.0) -> None:
        """Keep sampling until every follower has reached the head, then stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._drained():
            time.sleep(0.05)
        self.stop.set()
        self.thread.join()
        self.lag.conn.close()

    def _drained(self) -> bool:
        last = self.samples[-1] if self.samples else None
        return last is not None and all(p >= last.head for p in last.positions.values())

    def report(self, end: float) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
        """Per follower: the largest lag until ``end`` (wall clock), the lag at ``end``,
        and the seconds from ``end`` until it had applied everything written by then."""
        before = [s for s in self.samples if s.at <= end] or self.samples[:1]
        after = [s for s in self.samples if s.at > end]
        final = before[-1].head if not after else max(s.head for s in after)
        peak = {n: max(s.head - s.positions[n] for s in before) for n in DOWNSTREAM}
        at_end = {n: max(0, final - before[-1].positions[n]) for n in DOWNSTREAM}
        drain: dict[str, float] = {}
        for name in DOWNSTREAM:
            if at_end[name] == 0:
                drain[name] = 0.0
                continue
            caught = next((s.at for s in after if s.positions[name] >= final), None)
            drain[name] = float("inf") if caught is None else caught - end
        return peak, at_end, drain


@contextmanager
def followers(url: str, settings: Settings) -> Iterator[None]:
    """`todo projections run` and `todo relay run`, as processes of their own."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "KAFKA_BOOTSTRAP_SERVERS": str(settings.kafka_bootstrap_servers),
        "TODO_KAFKA_IDEMPOTENCE": "false",
        "TODO_KAFKA_TOPIC": settings.kafka_topic,
        "TODO_LOG_LEVEL": "WARNING",
        # Small pools: the scratch server allows 100 connections, and the 64 writers'
        # own connections must fit beside the followers' (default pools would take ~80).
        "TODO_DB_POOL_SIZE": "2",
        "TODO_DB_POOL_MAX_OVERFLOW": "4",
    }
    procs = [
        subprocess.Popen(todo_command("projections", "run"), env=env),
        subprocess.Popen(todo_command("relay", "run"), env=env),
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- set-up and the run --------------------------------------------------------------------


def seed(app: TodoApplication, todos: int, shared: Shared, batch: int = 250) -> None:
    """``todos`` todos, stored fast (many per transaction); their ids into the slots."""
    for start in range(0, todos, batch):
        made = [
            Todo.create(owner=owner_of(slot), title=f"todo {slot}", tags=["bench"])
            for slot in range(start, min(start + batch, todos))
        ]
        app.save(*made)
        for slot, todo in enumerate(made, start):
            shared.put(slot, todo.id.bytes)


def run_phase(
    settings: Settings, url: str, phase: Phase, processes: int, shared: Shared,
    zipf_exponent: float,
) -> Outcome:  # fmt: skip
    """The phase's writers in ``processes`` processes started together; their outcomes.

    Processes of their own (not a pool): each must start its share at the same moment,
    and the shared memory can only be handed to a process as it starts.
    """
    spawn = multiprocessing.get_context("spawn")
    threads = [phase.writers // processes + (p < phase.writers % processes)
               for p in range(processes)]  # fmt: skip
    start_at = time.time() + 5.0  # every process up and warmed up by then
    pipes, procs = [], []
    for p, n in enumerate(threads):
        receive, send = spawn.Pipe(duplex=False)
        args = (send, settings, url, phase, n / phase.writers, n, start_at, shared,
                zipf_exponent, p)  # fmt: skip
        procs.append(spawn.Process(target=drive_and_send, args=args))
        pipes.append(receive)
        procs[-1].start()
    total = Outcome()
    for receive, proc in zip(pipes, procs, strict=True):
        total.merge(receive.recv())
        proc.join()
    if total.last_began > start_at + 0.2:
        print(f"warning: a writer started {total.last_began - start_at:.1f} s late")
    return total


def drive_and_send(send: Any, *args: Any) -> None:
    send.send(drive(*args))


def ms(values: list[float], p: float) -> str:
    return f"{pct(values, p) * 1e3:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="load time in all")
    parser.add_argument("--rate", type=float, default=300.0, help="offered commands/s")
    parser.add_argument("--writers", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--todos", type=int, default=10_000)
    parser.add_argument("--zipf", type=float, default=0.99)
    args = parser.parse_args()
    out = console()
    # Per writer count: app at the rate, app flat out (35% of the time each), raw both (15%).
    share = {"app": 0.35 / len(args.writers), "raw": 0.15 / len(args.writers)}
    spawn = multiprocessing.get_context("spawn")
    shared = Shared(spawn.Array("c", args.todos * 16), spawn.Array("b", args.todos))
    broker = TansuBroker().start()
    try:
        with bench_database() as url:
            settings = Settings(
                database_url=url,
                jwt_secret="bench-" + "x" * 32,  # type: ignore[arg-type]
                kafka_bootstrap_servers=broker.bootstrap_servers,
                kafka_idempotence=False,
                kafka_topic=f"bench-{uuid.uuid4().hex[:8]}",
            )
            tables = run_all(out, args, settings, url, shared, share)
    finally:
        broker.stop(kill=True)
    for table in tables:
        out.print(table)


def run_all(
    out: Any, args: argparse.Namespace, settings: Settings, url: str, shared: Shared,
    share: dict[str, float],
) -> list[Table]:  # fmt: skip
    app = build_application(settings, url)
    build_read_side(settings, url).ensure()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE raw_events (originator_id uuid, originator_version bigint, "
            "topic text, state bytea, notification_id bigserial, "
            "PRIMARY KEY (originator_id, originator_version))"
        )
    seed(app, args.todos, shared)
    app.close()
    lag = Lag(url, settings.views_schema, settings.db_schema)
    commands, downstream = command_table(args), downstream_table()
    with followers(url, settings):
        first = lag.drain(timeout=120)
        held = lag.conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()
        out.print(f"seeded {args.todos:,} todos; followers caught up in "
                  f"{max(first.values()):.1f} s; {held[0] if held else '?'} connections "
                  "open before the writers'")  # fmt: skip
        for writers in args.writers:
            baselines: dict[str, Outcome] = {}
            for mode in ("raw", "app"):
                for rate in (args.rate, None):
                    phase = Phase(mode, writers, rate, args.seconds * share[mode])
                    label = "saturation" if rate is None else f"{rate:g}/s offered"
                    head = lag.head()
                    watch = Watch(lag) if mode == "app" else None
                    result = run_phase(settings, url, phase, args.processes, shared, args.zipf)
                    if watch is None:
                        baselines[label] = result
                    else:
                        watch.until_drained()
                        peak, at_end, drain = watch.report(result.ended)
                        downstream.add_row(str(writers), label, f"{lag.head() - head:,}",
                                           *(f"{peak[n]:,}" for n in DOWNSTREAM),
                                           *(f"{at_end[n]:,}" for n in DOWNSTREAM),
                                           *(f"{drain[n]:.2f}" for n in DOWNSTREAM))  # fmt: skip
                    add_command_row(commands, writers, label, mode, result, baselines[label])
                    if result.errors:
                        out.print(f"[red]errors ({mode}, {writers}, {label}):[/] {result.errors}")
    lag.conn.close()
    return [commands, downstream]


def command_table(args: argparse.Namespace) -> Table:
    mix = ", ".join(f"{k} {w:.0%}" for k, w in MIX)
    table = Table(
        title=f"commands: {args.todos:,} todos, zipf {args.zipf:g}, {mix}; writers are threads "
        f"in {args.processes} processes; raw = 1-row INSERT; COMMIT, same writers (same run)"
    )
    for col in ("writers", "load", "what", "cmd/s", "÷ raw", "p50 ms", "p95 ms", "p99 ms",
                "p99.9 ms", "conflicts retried", "gave up", "gone (410)", "no change"):
        table.add_column(col, justify="right")
    return table


def add_command_row(
    table: Table, writers: int, label: str, mode: str, result: Outcome, raw: Outcome
) -> None:
    lat = list(result.latencies)
    rate, raw_rate = result.rate, raw.rate
    what = "application" if mode == "app" else "raw 1-row commit"
    table.add_row(
        str(writers), label, what, f"{rate:,.0f}", f"{rate / raw_rate:.2f}x",
        ms(lat, 50), ms(lat, 95), ms(lat, 99), ms(lat, 99.9),
        f"{result.conflicts:,}" if mode == "app" else "",
        str(result.outcomes["gave up"]) if mode == "app" else "",
        str(result.outcomes["gone"]) if mode == "app" else "",
        str(result.outcomes["no change"]) if mode == "app" else "",
    )  # fmt: skip


def downstream_table() -> Table:
    table = Table(
        title="followers during the application runs: lag in events (max while running, at "
        "the end), seconds to drain after the end"
    )
    table.add_column("writers", justify="right")
    table.add_column("load", justify="right")
    table.add_column("events", justify="right")
    for heading in ("max lag", "lag at end", "drain s"):
        for name in DOWNSTREAM:
            table.add_column(f"{heading}: {name}", justify="right")
    return table


if __name__ == "__main__":
    main()
