"""Shard coordination for one worker: streams, lineage, leases and balance, with no coordinator process.

- **Streams**: each source table's stream ARN, from ``DescribeTable`` (a re-enabled stream has a new one).
- **Lineage**: one worker at a time (the holder of the shard-sync lease) lists every shard with
  ``DescribeStream`` and adds a lease for each new one, parents first; whoever ends a shard looks up its
  children directly (``CHILD_SHARDS``) and adds theirs, so a split is picked up without a full listing. A
  child missing from that answer is found by the next full listing. Either way a child is only taken once
  its parents are ended (``core.leases.readable``).
- **Leases**: held leases are renewed every heartbeat; one that cannot be renewed for a lease period, or
  that another worker took, is reported lost and its consumer stops. A lease whose counter stood still for
  a lease period (on this worker's own clock) is expired and may be taken; free ones are taken at once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from reconciler.core.leases import Lease, assign, open_to, unleased
from reconciler.core.spec import RuleSet
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.observability.metrics import Metrics
from reconciler.ports import LeaseStore, Shard, StreamSource
from reconciler.settings import Settings

log = structlog.get_logger("reconciler.coordination")

Key = tuple[str, str]
SHARD_SYNC = Lease("#coordination", "shard-sync", table="")
"""The lease whose holder lists shards: one DescribeStream lister for all replicas (AWS allows 10 calls/s)."""


@dataclass(slots=True)
class _Seen:
    counter: int
    owner: str | None
    since: float


class Coordinator:
    def __init__(
        self,
        *,
        settings: Settings,
        rules: RuleSet,
        source: StreamSource,
        leases: LeaseStore,
        metrics: Metrics,
        owner: str,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._rules = rules
        self._source = source
        self._leases = leases
        self._metrics = metrics
        self.owner = owner
        self._monotonic = monotonic
        self.streams: dict[str, str] = {}  # source table -> stream ARN
        self.held: dict[Key, Lease] = {}
        self._renewed: dict[Key, float] = {}
        self._seen: dict[Key, _Seen] = {}
        self._leader: Lease | None = None
        self._started = monotonic()

    @property
    def leading(self) -> bool:
        return self._leader is not None

    # -- streams and lineage ---------------------------------------------------------------------------
    async def discover(self, table: str) -> None:
        info = await self._source.describe(table)
        if info.view_type is None or not info.view_type.has_old_image:
            raise ConfigError(
                f"table {table!r} streams {info.view_type}; OLD_IMAGE or NEW_AND_OLD_IMAGES is needed"
            )
        self.streams[table] = info.arn

    async def lead(self) -> None:
        """Keep or take the shard-sync lease."""
        if self._leader is not None:
            key = self._leader.key
            try:
                self._leader = await self._leases.renew(self._leader)
            except ReconcilerError as exc:
                log.warning("lease.renew_failed", shard=key[1], error=str(exc))
                if self._monotonic() - self._renewed.get(key, 0.0) < self._settings.lease_seconds:
                    return
                self._leader = None  # unrenewable for a lease period: another worker may hold it now
            if self._leader is None:
                log.info("lease.shard_sync_lost")
            else:
                self._renewed[key] = self._monotonic()
            return
        row = await self._leases.get(*SHARD_SYNC.key)
        if row is None:
            await self._leases.create(SHARD_SYNC)
            row = await self._leases.get(*SHARD_SYNC.key)
        if row is not None and open_to(row, self._reclaiming(), self._observe([row])):
            self._leader = await self._leases.take(row, self.owner)
            if self._leader is not None:
                self._renewed[row.key] = self._monotonic()
                log.info("lease.shard_sync_taken")

    async def sync(self, table: str) -> int:
        """Add a lease for every listed shard that has none, parents first; how many were added."""
        arn = self.streams[table]
        shards = await self._source.shards(arn)
        known = {lease.shard_id for lease in await self._leases.leases(arn)}
        listed = {shard.shard_id for shard in shards}
        added = 0
        for shard in _parents_first(shards):
            if shard.shard_id in known:
                continue
            # A parent neither listed nor leased aged out of the stream long ago: nothing to wait for.
            parents = tuple(p for p in (shard.parent_id,) if p and (p in listed or p in known))
            added += await self._leases.create(Lease(arn, shard.shard_id, table, parents))
            known.add(shard.shard_id)
        if added:
            log.info("lineage.synced", table=table, shards=len(shards), added=added)
        return added

    async def shard_ended(self, lease: Lease) -> None:
        """Free a finished shard's children at once: look them up and add their leases."""
        self.drop(lease.key)
        self._metrics.leases_held.labels(lease.table).set(self._count(lease.table))
        parent = lease.parents[0] if lease.parents else None
        children = await self._source.children(Shard(lease.stream_arn, lease.shard_id, parent, closed=True))
        for child in children:
            await self._leases.create(Lease(lease.stream_arn, child.shard_id, lease.table, (lease.shard_id,)))
        log.info("lineage.shard_ended", shard=lease.shard_id, children=[c.shard_id for c in children])

    # -- leases ----------------------------------------------------------------------------------------
    async def renew(self) -> list[Key]:
        """Renew every held lease; the keys of those lost (taken by another, or unrenewable too long)."""
        lost: list[Key] = []
        now = self._monotonic()
        for key, lease in list(self.held.items()):
            try:
                renewed = await self._leases.renew(lease)
            except ReconcilerError as exc:
                log.warning("lease.renew_failed", shard=key[1], error=str(exc))
                if now - self._renewed.get(key, now) < self._settings.lease_seconds:
                    continue
                renewed = None  # a peer may have taken it by now: stop before the next checkpoint
            if renewed is None:
                lost.append(key)
                self.drop(key)
            else:
                self.held[key], self._renewed[key] = renewed, now
        return lost

    async def balance(self) -> list[Lease]:
        """Read every stream's leases, take what this worker's share allows; the leases taken."""
        table_of = {arn: table for table, arn in self.streams.items()}
        rows: list[Lease] = []
        for arn, table in table_of.items():
            found = await self._leases.leases(arn)
            rows += [lease if lease.table else _with_table(lease, table) for lease in found]
        expired = self._observe(rows)
        plan = assign(
            rows,
            me=self.owner,
            held=self.held.keys(),
            expired=expired,
            take_at_most=self._settings.leases_to_take,
            max_leases=self._settings.max_leases,
            reclaim=self._reclaiming() is not None,
        )
        taken: list[Lease] = []
        for take in plan.takes:
            lease = await self._leases.take(take.lease, self.owner)
            if lease is None:
                continue  # another worker moved first
            self.held[lease.key], self._renewed[lease.key] = lease, self._monotonic()
            self._metrics.lease_transitions.labels(lease.table, take.transition).inc()
            log.info("lease.taken", table=lease.table, shard=lease.shard_id, how=take.transition)
            taken.append(lease)
        self._report(rows, expired)
        return taken

    async def release_all(self) -> None:
        """Give every lease up (graceful shutdown), so peers take them at their next heartbeat."""
        for key, lease in list(self.held.items()):
            try:
                if await self._leases.release(lease):
                    self._metrics.lease_transitions.labels(lease.table, "released").inc()
            except ReconcilerError as exc:  # it expires after a lease period instead
                log.warning("lease.release_failed", shard=key[1], error=str(exc))
            self.drop(key)
        if self._leader is not None:
            try:
                await self._leases.release(self._leader)
            except ReconcilerError as exc:
                log.warning("lease.release_failed", shard=SHARD_SYNC.shard_id, error=str(exc))
            self._leader = None
        for table in self._rules.sources:
            self._metrics.leases_held.labels(table).set(0)
        log.info("lease.released_all")

    def drop(self, key: Key) -> None:
        self.held.pop(key, None)
        self._renewed.pop(key, None)

    def _observe(self, rows: Sequence[Lease]) -> set[Key]:
        """Note each lease's counter; the keys of owned leases whose counter stood still a lease period."""
        now = self._monotonic()
        for lease in rows:
            seen = self._seen.get(lease.key)
            if seen is None or (seen.counter, seen.owner) != (lease.counter, lease.owner):
                self._seen[lease.key] = _Seen(lease.counter, lease.owner, now)
        return {
            lease.key
            for lease in rows
            if lease.owner is not None and now - self._seen[lease.key].since >= self._settings.lease_seconds
        }

    def _reclaiming(self) -> str | None:
        """This worker's name during its first lease period, when a lease in its name that it does not hold
        is an earlier life's (a restart with the same worker id) and is taken back at once; None after, when
        such a lease was given up by this process (unrenewable) and waits to expire like any other."""
        return self.owner if self._monotonic() - self._started < self._settings.lease_seconds else None

    def _report(self, rows: Sequence[Lease], expired: set[Key]) -> None:
        for table, arn in self.streams.items():
            mine = [lease for lease in rows if lease.stream_arn == arn]
            owners = {lease.owner for lease in mine if lease.owner and lease.key not in expired}
            self._metrics.leases_held.labels(table).set(self._count(table))
            self._metrics.shards_unleased.labels(table).set(unleased(mine, expired))
            self._metrics.lease_owners.labels(table).set(len(owners))

    def _count(self, table: str) -> int:
        return sum(lease.table == table for lease in self.held.values())


def _with_table(lease: Lease, table: str) -> Lease:
    """A row written before leases existed names no table: it is the stream's."""
    return dataclasses.replace(lease, table=table)


def _parents_first(shards: Sequence[Shard]) -> list[Shard]:
    """Listed shards ordered so that a parent comes before its children."""
    by_id = {shard.shard_id: shard for shard in shards}

    def depth(shard: Shard) -> int:
        seen: set[str] = set()
        while shard.parent_id in by_id and shard.shard_id not in seen:
            seen.add(shard.shard_id)
            shard = by_id[shard.parent_id]
        return len(seen)

    return sorted(shards, key=depth)
