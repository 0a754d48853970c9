"""Which shard leases a worker takes: a pure function of the lease table as that worker last read it.

The rules, after the Kinesis Client Library's lease taker:

- a shard is *readable* once every parent it descends from is read to its end (or has no lease left: its
  row expires two days after it ended), so a child never starts before its parents are done;
- a lease is *free* when no one owns it (new, or released on a graceful shutdown): taken at once; it is
  *expired* when its counter stood still for a lease period (the caller says which): its owner stopped;
- a worker aims at an even share, ``ceil(readable / live owners)``, and takes at most ``take_at_most``
  free or expired leases per pass; only when there are none does it steal, one lease per pass, from the
  owner holding the most, and only if that owner holds two or more than it does: a table where no two
  workers differ by more than one lease never churns.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

SHARD_END = "SHARD_END"
"""Checkpoint value of a closed shard that has been read to its end."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One shard's row in the lease table: who reads it, how far it is read, and what it descends from.

    ``counter`` moves on every change of hands and every renewal, so a peer that sees it stand still for a
    lease period knows the owner stopped (the KCL's rule: no clock is compared across hosts). ``token`` is
    new at every take: a checkpoint is written only under the token its writer took the lease with.
    """

    stream_arn: str
    shard_id: str
    table: str
    parents: tuple[str, ...] = ()
    owner: str | None = None
    token: str | None = None
    counter: int = 0
    checkpoint: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.stream_arn, self.shard_id)

    @property
    def ended(self) -> bool:
        """Read to its end: its children may start."""
        return self.checkpoint == SHARD_END


Transition = Literal["taken", "expired", "stolen"]
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Take:
    lease: Lease
    transition: Transition


@dataclass(frozen=True, slots=True)
class Assignment:
    """What to take this pass, and what the table looked like (for metrics and logs)."""

    takes: list[Take] = field(default_factory=list)
    readable: int = 0
    unleased: int = 0
    owners: frozenset[str] = frozenset()
    share: int = 0


def readable(lease: Lease, by_key: dict[Key, Lease]) -> bool:
    """Not ended, and every parent that still has a lease is ended."""
    if lease.ended:
        return False
    parents = (by_key.get((lease.stream_arn, p)) for p in lease.parents)
    return all(parent is None or parent.ended for parent in parents)


def assign(
    leases: Sequence[Lease],
    *,
    me: str,
    held: Collection[Key],
    expired: Collection[Key],
    take_at_most: int,
    max_leases: int,
    reclaim: bool = True,
) -> Assignment:
    """The leases ``me`` should take now. ``held``: keys this worker holds under a token it knows;
    ``expired``: owned leases whose counter stood still for a lease period, as this worker observed;
    ``reclaim``: leases in this worker's name that it does not hold are an earlier life's (a restart with
    the same worker id) and are taken at once; the caller allows it only in its first lease period."""
    by_key = {lease.key: lease for lease in leases}
    ready = [lease for lease in leases if readable(lease, by_key)]
    live = Counter(
        lease.owner
        for lease in ready
        if lease.owner is not None and lease.key not in expired and lease.owner != me
    )
    owners = frozenset({me, *live})
    share = min(math.ceil(len(ready) / len(owners)), max_leases) if ready else 0
    mine = sum(lease.key in held for lease in ready)
    mine_before = me if reclaim else None
    open_to_me = [lease for lease in ready if lease.key not in held and open_to(lease, mine_before, expired)]
    need = min(share - mine, take_at_most)
    takes = [Take(lease, _how(lease, me)) for lease in sorted(open_to_me, key=_priority(me))][: max(need, 0)]
    if not takes and need > 0:
        takes = _steal(ready, live, mine, me)
    return Assignment(takes, len(ready), _count_unleased(ready, expired), owners, share)


def unleased(leases: Sequence[Lease], expired: Collection[Key]) -> int:
    """Readable leases that no live worker holds: free, or expired."""
    by_key = {lease.key: lease for lease in leases}
    return _count_unleased([lease for lease in leases if readable(lease, by_key)], expired)


def _count_unleased(ready: Sequence[Lease], expired: Collection[Key]) -> int:
    return sum(lease.owner is None or lease.key in expired for lease in ready)


def open_to(lease: Lease, me: str | None, expired: Collection[Key]) -> bool:
    """Whether ``me`` may take ``lease`` without stealing: free, expired, or (``me`` given) in its name."""
    return lease.owner is None or (me is not None and lease.owner == me) or lease.key in expired


def _how(lease: Lease, me: str) -> Transition:
    return "taken" if lease.owner in {None, me} else "expired"


def _priority(me: str) -> Callable[[Lease], tuple[int, str]]:
    """Own and free leases before expired ones; then a per-worker order, so that workers starting together
    reach for different leases instead of racing for the same ones."""

    def key(lease: Lease) -> tuple[int, str]:
        return (0 if lease.owner in {None, me} else 1, _spread(me, lease))

    return key


def _steal(ready: Sequence[Lease], live: Counter[str], mine: int, me: str) -> list[Take]:
    """One lease from the most loaded owner, if it holds at least two more than this worker: each steal
    narrows the gap, so stealing stops once no two workers differ by more than one lease."""
    if not live:
        return []
    victim, count = max(live.items(), key=lambda item: (item[1], item[0]))
    if count < mine + 2:
        return []
    theirs = sorted((lease for lease in ready if lease.owner == victim), key=lambda lease: _spread(me, lease))
    return [Take(theirs[0], "stolen")]


def _spread(me: str, lease: Lease) -> str:
    return hashlib.sha256(f"{me}\0{lease.stream_arn}\0{lease.shard_id}".encode()).hexdigest()
