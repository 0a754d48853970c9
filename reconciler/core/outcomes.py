"""Typed outcomes of one stream record, and where the checkpoint may move to.

The checkpoint never passes unfinished work: it advances to the last record before the first one whose
outcome is not final. Final means deleted (including already gone), ignored, filtered, or durably
dead-lettered.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from reconciler.core.classify import Cause
from reconciler.core.plan import Unsafe


@dataclass(frozen=True, slots=True)
class Tally:
    """What one deletion did, by artifact kind."""

    object_versions: int = 0
    delete_markers: int = 0
    items: int = 0
    absent: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.object_versions + other.object_versions,
            self.delete_markers + other.delete_markers,
            self.items + other.items,
            self.absent + other.absent,
        )


@dataclass(frozen=True, slots=True)
class Ignored:
    """INSERT or MODIFY: nothing to delete."""

    sequence_number: str


@dataclass(frozen=True, slots=True)
class Filtered:
    """A removal the table's cascade rules exclude (a cause that does not cascade, a skip condition): final,
    counted, and nothing is deleted."""

    sequence_number: str
    cause: Cause
    reason: str


@dataclass(frozen=True, slots=True)
class Deleted:
    """Every safe target is gone; ``unsafe`` ones were refused and recorded."""

    sequence_number: str
    cause: Cause
    tally: Tally
    completed_at: dt.datetime
    unsafe: tuple[Unsafe, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """The work could not be done and is durably recorded for an operator."""

    sequence_number: str
    reason: str
    cause: Cause | None = None
    tally: Tally = field(default_factory=Tally)


@dataclass(frozen=True, slots=True)
class Pending:
    """A retriable failure: the record will be delivered again from the checkpoint."""

    sequence_number: str
    error: str


Outcome = Ignored | Filtered | Deleted | DeadLettered | Pending


def is_final(outcome: Outcome) -> bool:
    return not isinstance(outcome, Pending)


def checkpoint_after(outcomes: Sequence[Outcome]) -> str | None:
    """Sequence number to checkpoint after a batch (in stream order), or None if it must not move."""
    position: str | None = None
    for outcome in outcomes:
        if not is_final(outcome):
            break
        position = outcome.sequence_number
    return position
