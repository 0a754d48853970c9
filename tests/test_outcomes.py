"""The checkpoint never passes a record whose outcome is not final."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.classify import Cause
from reconciler.core.outcomes import DeadLettered, Deleted, Ignored, Outcome, Pending, Tally, Window

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _outcome(kind: str, n: int) -> Outcome:
    seq = f"{n:021d}"
    match kind:
        case "deleted":
            return Deleted(seq, Cause.TTL, Tally(), NOW)
        case "ignored":
            return Ignored(seq)
        case "dead":
            return DeadLettered(seq, "refused")
        case _:
            return Pending(seq, "throttled")


kinds = st.lists(st.sampled_from(["deleted", "ignored", "dead", "pending"]), max_size=30)


@given(kinds, st.randoms(use_true_random=False))
def test_the_window_checkpoints_just_before_the_lowest_unfinished_record(
    kinds: list[str], rng: random.Random
) -> None:
    """Whatever order records finish in, the position is the last record before the lowest one not finished
    (pending or still in flight), and it only moves forwards."""
    outcomes = [_outcome(k, i + 1) for i, k in enumerate(kinds)]
    window = Window()
    for outcome in outcomes:
        window.add(outcome.sequence_number)
    finished: set[int] = set()
    positions: list[int] = []
    for outcome in rng.sample(outcomes, len(outcomes)):
        before = window.position
        moved = window.finish(outcome)
        if not isinstance(outcome, Pending):
            finished.add(int(outcome.sequence_number))
        lowest_open = next((n for n in range(1, len(outcomes) + 1) if n not in finished), None)
        expected = (lowest_open or len(outcomes) + 1) - 1
        assert int(window.position or 0) == expected
        assert moved == (window.position != before)
        positions.append(int(window.position or 0))
    assert positions == sorted(positions)
    assert len(window) == len(outcomes) - int(window.position or 0)  # held from the lowest unfinished on


def test_a_window_starts_at_its_checkpoint_and_ignores_unknown_records() -> None:
    window = Window("000000000000000000005")
    assert not window.finish(Deleted(f"{9:021d}", Cause.TTL, Tally(), NOW))  # never added
    window.add(f"{6:021d}")
    assert window.position == "000000000000000000005"
    assert window.finish(Ignored(f"{6:021d}"))
    assert window.position == f"{6:021d}"


def test_tallies_add_up() -> None:
    assert Tally(1, 2, 3, 4) + Tally(10, 20, 30, 40) == Tally(11, 22, 33, 44)


def test_a_record_numbered_below_one_before_it_holds_the_position_until_it_finishes() -> None:
    """A source out of order ([1, 3, 2, 4]): a restart reads after the checkpoint by number, so the position
    must not reach 3 while 2 is unfinished, nor move back to 2 once it finishes."""
    window = Window()
    for n in (1, 3, 2, 4):
        window.add(f"{n:021d}")
    positions = []
    for n in (1, 3, 4, 2):
        window.finish(Ignored(f"{n:021d}"))
        positions.append(int(window.position or 0))
    assert positions == [1, 1, 1, 4]


@given(
    st.lists(st.integers(min_value=1, max_value=12), max_size=20),
    st.lists(st.booleans(), min_size=20, max_size=20),
    st.randoms(use_true_random=False),
)
def test_whatever_order_a_source_numbers_records_in_the_position_never_passes_an_unfinished_one(
    numbers: list[int], stuck: list[bool], rng: random.Random
) -> None:
    """Duplicates and records out of numeric order included: every record numbered at or below the position
    has finished, the position only moves forwards, and once every record finished it is the highest."""
    window = Window()
    for n in numbers:
        window.add(f"{n:021d}")
    finished: set[int] = set()
    positions = [0]
    for index in rng.sample(range(len(numbers)), len(numbers)):
        n = numbers[index]
        window.finish(Pending(f"{n:021d}", "throttled") if stuck[index] else Ignored(f"{n:021d}"))
        if not stuck[index]:
            finished.add(n)
        position = int(window.position or 0)
        assert all(m in finished for m in numbers if m <= position)
        positions.append(position)
    assert positions == sorted(positions)
    if not any(stuck[: len(numbers)]):
        assert positions[-1] == max(numbers, default=0)
