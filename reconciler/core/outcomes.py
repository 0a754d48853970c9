"""Typed outcomes of one stream record, and where the checkpoint may move to.

The checkpoint never passes unfinished work: it advances to the last record before the first one whose
outcome is not final. Final means deleted (including already gone), ignored, filtered, or durably
dead-lettered.
"""

from __future__ import annotations

import datetime as dt
import heapq
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


class Window:
    """Records of one shard in flight, in stream order, finishing in any order.

    ``position`` is the checkpoint: the last record before the lowest unfinished one. It moves whenever the
    lowest unfinished record finishes, never past a record still in flight, and never backwards.

    A shard's sequence numbers grow in stream order, and a checkpoint is resumed from by number. A source that
    breaks that order (a record numbered below one before it) must not make the position pass an unfinished
    record by number, nor move back: the position is the highest finished record that precedes every
    unfinished one in stream order and is numbered below all of them.
    """

    def __init__(self, position: str | None = None) -> None:
        self.position = position
        self._open: dict[str, bool] = {}  # sequence number -> finished; insertion order is stream order
        self._lowest: list[tuple[int, str]] = []  # open records by number; finished ones are skipped lazily
        self._passed: list[str] = []  # finished, behind no open record, numbered above an unfinished one

    def __len__(self) -> int:
        return len(self._open)

    def add(self, sequence_number: str) -> None:
        """A record read after every record added so far."""
        self._open[sequence_number] = False
        heapq.heappush(self._lowest, (int(sequence_number), sequence_number))

    def finish(self, outcome: Outcome) -> bool:
        """Mark a record's outcome; True if the position moved. A non-final outcome changes nothing."""
        sequence_number = outcome.sequence_number
        if not is_final(outcome) or sequence_number not in self._open:
            return False
        self._open[sequence_number] = True
        while self._open:
            first = next(iter(self._open))
            if not self._open[first]:
                break
            del self._open[first]
            self._passed.append(first)
        return self._advance()

    def _advance(self) -> bool:
        """Move to the highest passed record numbered below every unfinished one, if that is further on."""
        while self._lowest and self._open.get(self._lowest[0][1]) is not False:
            heapq.heappop(self._lowest)  # finished (or gone): no longer holds the position back
        floor = self._lowest[0][0] if self._lowest else None
        below = [s for s in self._passed if floor is None or int(s) < floor]
        if not below:
            return False
        self._passed = [s for s in self._passed if floor is not None and int(s) >= floor]
        highest = max(below, key=int)
        if self.position is not None and (not self.position.isdigit() or int(highest) <= int(self.position)):
            return False  # a redelivered or out-of-order record: the position never moves back
        self.position = highest
        return True
