"""Single leases held for one stretch of work, beside the shard coordinator: the expiry sweeper's segments and
the scheduled jobs. Each is a row under a ``#sweep/...`` partition of the lease table, so no stream's shard
leases are ever among them.

A row is taken when it is free, expired (its counter stood still for a lease period, as this replica saw it)
or, in this replica's first lease period, in its own name (an earlier life's), and only if the caller says
its work is due; the take is conditional on the counter read, so of two replicas racing for a row one wins.
The winner renews the row every heartbeat while the work runs and releases it after, unless it was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from reconciler.core.leases import Lease, open_to
from reconciler.errors import ReconcilerError
from reconciler.ports import LeaseStore
from reconciler.settings import Settings

log = structlog.get_logger("reconciler.claims")

Due = Callable[[Lease], Awaitable[bool]]
"""Whether the work under a free row is due now (read after the row, before the take)."""


class Claims:
    def __init__(
        self,
        leases: LeaseStore,
        settings: Settings,
        owner: str,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases = leases
        self._settings = settings
        self.owner = owner
        self._monotonic = monotonic
        self._seen: dict[tuple[str, str], tuple[int, str | None, float]] = {}
        self._started = monotonic()

    @contextlib.asynccontextmanager
    async def claim(self, stub: Lease, due: Due) -> AsyncIterator[Holding | None]:
        """``stub``'s row, held (renewed) for the block and released after it; None if not due or taken."""
        row = await self._leases.get(*stub.key)
        if row is None:
            await self._leases.create(stub)
            row = await self._leases.get(*stub.key)
        taken = None
        free = row is not None and open_to(row, self._reclaiming(), self._expired(row))
        if row is not None and free and await due(row):
            taken = await self._leases.take(row, self.owner)
        if taken is None:
            yield None
            return
        holding = Holding(self._leases, taken, self._settings, self._monotonic)
        async with holding.renewing():
            yield holding

    def _expired(self, row: Lease) -> set[tuple[str, str]]:
        """``{row.key}`` if its owner's counter stood still for a lease period, as this replica saw it."""
        now, seen = self._monotonic(), self._seen.get(row.key)
        if seen is None or seen[:2] != (row.counter, row.owner):
            self._seen[row.key] = seen = (row.counter, row.owner, now)
        stale = row.owner is not None and now - seen[2] >= self._settings.lease_seconds
        return {row.key} if stale else set()

    def _reclaiming(self) -> str | None:
        """As the coordinator: in its first lease period a replica takes back leases in its own name."""
        return self.owner if self._monotonic() - self._started < self._settings.lease_seconds else None


class Holding:
    """A lease held for one stretch of work: renewed every heartbeat; ``lost`` once taken by another or not
    renewable for a lease period; released at the end unless lost."""

    def __init__(
        self, leases: LeaseStore, lease: Lease, settings: Settings, monotonic: Callable[[], float]
    ) -> None:
        self._leases = leases
        self.lease = lease
        self._settings = settings
        self._monotonic = monotonic
        self._lost = asyncio.Event()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def lost_event(self) -> asyncio.Event:
        """Set once the lease is lost."""
        return self._lost

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._renew(), name=f"lease:{self.lease.stream_arn}:{self.lease.shard_id}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if not self.lost:
                try:
                    await self._leases.release(self.lease)
                except ReconcilerError as exc:  # it expires after a lease period instead
                    log.warning("sweep.release_failed", **self._names(), error=str(exc))

    async def _renew(self) -> None:
        renewed_at = self._monotonic()
        while True:
            await asyncio.sleep(self._settings.heartbeat_seconds)
            try:
                renewed = await self._leases.renew(self.lease)
            except ReconcilerError as exc:
                log.warning("sweep.renew_failed", **self._names(), error=str(exc))
                if self._monotonic() - renewed_at < self._settings.lease_seconds:
                    continue
                renewed = None
            if renewed is None:
                self._lost.set()
                log.warning("sweep.lease_lost", **self._names())
                return
            self.lease, renewed_at = renewed, self._monotonic()

    def _names(self) -> dict[str, str]:
        return {"lease": self.lease.stream_arn, "segment": self.lease.shard_id}
