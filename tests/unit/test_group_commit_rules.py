"""Group commit's pure rules, without a database: batch splitting and conflict decisions."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from uuid import UUID, uuid4

from tododb.eventstore.batches import Key, Limits, decide, positions_by_key, take_batch

A, B = uuid4(), uuid4()


def keys(todo: UUID, *versions: int) -> list[Key]:
    return [(todo, v) for v in versions]


# ---- decide: which commands of a batch win ----------------------------------------------


def test_commands_on_different_todos_all_win() -> None:
    assert decide([keys(A, 1), keys(B, 1, 2)], taken=set()) == [True, True]


def test_a_command_whose_version_is_stored_loses_alone() -> None:
    assert decide([keys(A, 2), keys(B, 5)], taken={(A, 2)}) == [False, True]


def test_two_commands_from_the_same_version_the_first_in_the_queue_wins() -> None:
    assert decide([keys(A, 2), keys(A, 2), keys(A, 2)], taken=set()) == [True, False, False]


def test_a_command_overlapping_an_earlier_winner_on_any_version_loses() -> None:
    assert decide([keys(A, 2, 3), keys(A, 3)], taken=set()) == [True, False]


def test_a_loser_claims_nothing() -> None:
    # The first command lost to the store; its other version stays free for the second,
    # exactly as inserting them one after another would go.
    assert decide([keys(A, 2, 3), keys(A, 3)], taken={(A, 2)}) == [False, True]


def test_a_command_repeating_a_key_of_its_own_loses_as_the_primary_key_would_have_it() -> None:
    assert decide([keys(A, 2, 2), keys(A, 2)], taken=set()) == [False, True]


def test_successive_versions_of_one_todo_in_one_batch_all_win() -> None:
    assert decide([keys(A, 1), keys(A, 2), keys(A, 3, 4)], taken=set()) == [True, True, True]


def test_stored_keys_of_other_todos_do_not_matter() -> None:
    assert decide([keys(A, 1)], taken={(B, 1), (A, 2)}) == [True]


# ---- take_batch: what goes into one batch -----------------------------------------------


@dataclass
class Queued:
    name: str
    keys: list[Key] = field(default_factory=lambda: keys(uuid4(), 1))
    size: int = 100


def queue_of(*items: Queued) -> deque[Queued]:
    return deque(items)


def test_a_batch_takes_everything_waiting_in_order_when_it_fits() -> None:
    queue = queue_of(Queued("a"), Queued("b"), Queued("c"))
    assert [c.name for c in take_batch(queue, Limits())] == ["a", "b", "c"]
    assert not queue


def test_a_batch_stops_at_the_command_limit() -> None:
    queue = queue_of(*(Queued(str(i)) for i in range(5)))
    assert [c.name for c in take_batch(queue, Limits(commands=2))] == ["0", "1"]
    assert [c.name for c in queue] == ["2", "3", "4"]


def test_a_batch_stops_at_the_first_command_over_the_event_limit_keeping_the_order() -> None:
    small, big, tiny = Queued("small"), Queued("big", keys(A, *range(1, 9))), Queued("tiny")
    queue = queue_of(small, big, tiny)
    assert [c.name for c in take_batch(queue, Limits(events=5))] == ["small"]
    assert [c.name for c in queue] == ["big", "tiny"]  # tiny would fit, but must not overtake


def test_a_command_over_every_limit_still_goes_alone() -> None:
    huge = Queued("huge", keys(A, *range(1, 101)), size=10_000)
    queue = queue_of(huge, Queued("next"))
    batch = take_batch(queue, Limits(commands=1, events=10, bytes=100))
    assert [c.name for c in batch] == ["huge"]
    assert [c.name for c in queue] == ["next"]


def test_a_batch_stops_at_the_byte_limit() -> None:
    queue = queue_of(Queued("a", size=60), Queued("b", size=60))
    assert [c.name for c in take_batch(queue, Limits(bytes=100))] == ["a"]


def test_an_empty_queue_makes_an_empty_batch() -> None:
    assert take_batch(queue_of(), Limits()) == []


def test_positions_are_looked_up_by_key_not_by_order() -> None:
    rows = [(A, 2, 11), (B, 1, 10)]
    assert positions_by_key(rows) == {(B, 1): 10, (A, 2): 11}
