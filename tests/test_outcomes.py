"""The checkpoint never passes a record whose outcome is not final."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.classify import Cause
from reconciler.core.outcomes import DeadLettered, Deleted, Ignored, Outcome, Pending, Tally, checkpoint_after

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


batches = st.lists(st.sampled_from(["deleted", "ignored", "dead", "pending"]), max_size=30).map(
    lambda kinds: [_outcome(k, i + 1) for i, k in enumerate(kinds)]
)


@given(batches)
def test_checkpoint_stops_before_the_first_pending_record(outcomes: list[Outcome]) -> None:
    position = checkpoint_after(outcomes)
    first_pending = next((o for o in outcomes if isinstance(o, Pending)), None)
    if position is not None:
        assert all(not isinstance(o, Pending) for o in outcomes if int(o.sequence_number) <= int(position))
    if first_pending is None:
        assert position == (outcomes[-1].sequence_number if outcomes else None)
    else:
        preceding = [o for o in outcomes if int(o.sequence_number) < int(first_pending.sequence_number)]
        assert position == (preceding[-1].sequence_number if preceding else None)


def test_tallies_add_up() -> None:
    assert Tally(1, 2, 3, 4) + Tally(10, 20, 30, 40) == Tally(11, 22, 33, 44)
