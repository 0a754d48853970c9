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
