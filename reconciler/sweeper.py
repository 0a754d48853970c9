"""Expiry enforcement: delete items whose TTL passed more than a grace ago, instead of waiting days for TTL.

Each source table with a TTL attribute is read by a parallel Scan of ``sweep_segments`` segments, keys and TTL
only, within a budget of read units per second. A segment is swept by one replica at a time: it is a lease
(``#sweep/expiry/<table>``, ``segment-NNNN``) in the lease table, taken when free or expired as a shard's is,
renewed while its pass runs and released after it. The position (pass, page, next start key) is saved under
the lease after every page, so a pass resumes where a stopped replica left it.

Each candidate is deleted with a condition that its TTL is still due (an extended TTL wins), and the image it
deleted goes through the stream pipeline at once, as a REMOVE of cause ``expired``: the same plan, the same
scope checks. The stream's own REMOVE of the item comes later and repeats the plan harmlessly; it is also what
finishes the work if the sweeper's attempt could not (``left_to_stream``).

A table whose rules do not cascade ``expired`` removals is not swept: deleting its items early would leave the
artifacts a TTL deletion would have removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from reconciler.claims import Claims, Holding
from reconciler.core.classify import Cause
from reconciler.core.dynamodb_json import Image
from reconciler.core.leases import Lease
from reconciler.core.outcomes import Deleted, Filtered
from reconciler.core.plan import key_hash
from reconciler.core.records import EventName, StreamRecord, StreamViewType
from reconciler.core.spec import ExpiryIndex, RuleSet, TableSpec
from reconciler.errors import LeaseLostError, ReconcilerError
from reconciler.observability.metrics import Metrics
from reconciler.ports import (
    CandidatePage,
    ExpiredItems,
    ExpiryWindow,
    LeaseStore,
    SweepPosition,
    SweepPositions,
)
from reconciler.processing import Origin, RecordProcessor
from reconciler.settings import Settings

log = structlog.get_logger("reconciler.sweeper")

PAGE_ITEMS = 1000  # items a Scan page evaluates at most (a page also stops at 1 MB)
TTL_HORIZON = dt.timedelta(days=5 * 365)  # TTL ignores expiries older than this: so does the sweeper
Clock = Callable[[], dt.datetime]


def sweep_arn(table: str, index: ExpiryIndex | None = None) -> str:
    """The lease table's partition of a table's sweep segments (never a real stream ARN). A table swept
    through its expiry index has its own: a Scan's start key means nothing to a Query, and back."""
    return f"#sweep/expiry/{table}" if index is None else f"#sweep/expiry/{table}/index/{index.name}"


def segment_id(segment: int) -> str:
    return f"segment-{segment:04d}"


def sweepable(table: TableSpec) -> bool:
    """A TTL attribute, and ``expired`` removals cascade: early deletion then deletes what TTL's would."""
    return table.ttl_attribute is not None and Cause.EXPIRED in table.cascade.causes


class ReadBudget:
    """A token bucket of read capacity units: each Scan page spends what it consumed, and the next page waits
    until the bucket is out of debt. It holds at most one second of units, so idle time buys no burst."""

    def __init__(
        self,
        per_second: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = asyncio.sleep,
    ) -> None:
        self._rate = per_second
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = per_second
        self._at = monotonic()

    async def wait(self) -> None:
        self._refill()
        if self._tokens < 0:
            waited = self._sleep(-self._tokens / self._rate)
            if asyncio.iscoroutine(waited):
                await waited
            self._refill()

    def spend(self, units: float) -> None:
        self._refill()
        self._tokens -= units

    def _refill(self) -> None:
        now = self._monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now


@dataclass
class SweepReport:
    """What one pass over every segment did (``sweep --once`` prints it)."""

    candidates: int = 0
    enforced: int = 0
    skipped: int = 0
    left_to_stream: int = 0
    pages: int = 0
    read_units: float = 0.0
    segments: int = 0
    busy: int = 0
    due: list[tuple[str, Image, int]] = field(default_factory=list)
    """Dry run: (table, key, TTL) of every candidate, deleted or not."""


@dataclass(frozen=True, slots=True)
class Pass:
    """How one pass runs: ``force`` sweeps a segment whose last pass ended less than an interval ago;
    ``dry_run`` only lists; ``grace`` overrides the setting (``sweep --expired``: every expired item)."""

    force: bool = False
    dry_run: bool = False
    grace: float | None = None


class Sweeper:
    def __init__(
        self,
        *,
        settings: Settings,
        rules: RuleSet,
        found: ExpiredItems,
        positions: SweepPositions,
        leases: LeaseStore,
        processor: RecordProcessor,
        metrics: Metrics,
        owner: str,
        clock: Clock,
        budget: ReadBudget | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        page_items: int = PAGE_ITEMS,
    ) -> None:
        self._settings = settings
        self._rules = rules
        self._found = found
        self._positions = positions
        self._processor = processor
        self._metrics = metrics
        self.owner = owner
        self._clock = clock
        self._budget = budget or ReadBudget(settings.sweep_read_units_per_second)
        self._monotonic = monotonic
        self._page_items = page_items
        self._claims = Claims(leases, settings, owner, monotonic)
        self._sequence = itertools.count()
        self.tables = tuple(t for t in rules.sources if sweepable(rules.tables[t]))

    async def run(self, stopping: asyncio.Event) -> None:
        """Sweep due segments until ``stopping`` is set; a pass in progress stops after its current page."""
        skipped = [t for t in self._rules.sources if t not in self.tables]
        log.info("sweep.started", tables=list(self.tables), not_swept=skipped)
        while not stopping.is_set():
            try:
                await self.sweep(stopping)
            except ReconcilerError as exc:  # the next tick tries again
                self._metrics.failures.labels("sweep", type(exc).__name__).inc()
                log.warning("sweep.failed", error=str(exc), error_type=type(exc).__name__)
            except Exception as exc:  # a bug in one pass must not stop the worker: the next tick tries again
                self._metrics.failures.labels("sweep", type(exc).__name__).inc()
                log.exception("sweep.crashed", error_type=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self._settings.heartbeat_seconds)

    async def sweep(self, stopping: asyncio.Event, how: Pass = Pass()) -> SweepReport:
        """One look at every segment of every table: sweep those due and free, to the end of their pass."""
        report = SweepReport()
        for table in self.tables:
            for segment in self._order(table):
                if stopping.is_set():
                    return report
                if how.dry_run:
                    await self._pages(table, segment, None, stopping, how, report)
                    continue
                async with self._claim(table, segment, how.force) as holding:
                    if holding is None:
                        continue
                    report.segments += 1
                    try:
                        await self._pages(table, segment, holding, stopping, how, report)
                    except LeaseLostError as exc:
                        log.warning("sweep.lease_lost", table=table, segment=segment, error=str(exc))
        return report

    # -- leases ----------------------------------------------------------------------------------------
    def _claim(
        self,
        table: str,
        segment: int,
        force: bool,  # noqa: FBT001 - internal
    ) -> contextlib.AbstractAsyncContextManager[Holding | None]:
        """The segment's lease, held (renewed) for the block, released after it; None if not due or taken."""

        async def due(row: Lease) -> bool:
            return force or self._due(await self._positions.load(row))

        arn = sweep_arn(table, self._rules.tables[table].expiry_index)
        return self._claims.claim(Lease(arn, segment_id(segment), table), due)

    def _due(self, position: SweepPosition | None) -> bool:
        if position is None or position.finished_at is None:
            return True
        return self._clock().timestamp() >= position.finished_at + self._settings.sweep_interval_seconds

    def _order(self, table: str) -> list[int]:
        """A per-replica order of segments, so replicas starting together reach for different ones."""

        def spread(segment: int) -> str:
            return hashlib.sha256(f"{self.owner}\0{table}\0{segment}".encode()).hexdigest()

        return sorted(range(self._segments(table)), key=spread)

    def _segments(self, table: str) -> int:
        """A Scan's ``sweep_segments``, or one per partition value of the table's sparse expiry index."""
        index = self._rules.tables[table].expiry_index
        return len(index.partition_values) if index is not None else self._settings.sweep_segments

    async def _page(
        self, table: str, window: ExpiryWindow, segment: int, start: Image | None
    ) -> CandidatePage:
        """The next page of a segment: a Scan segment, or a Query of one partition of the expiry index."""
        index = self._rules.tables[table].expiry_index
        if index is not None:
            value = index.partition_values[segment]
            return await self._found.query(
                table, window, index=index, value=value, start=start, limit=self._page_items
            )
        return await self._found.scan(
            table,
            window,
            segment=segment,
            segments=self._settings.sweep_segments,
            start=start,
            limit=self._page_items,
        )

    # -- pages -----------------------------------------------------------------------------------------
    async def _pages(  # noqa: PLR0917 - one segment's context
        self,
        table: str,
        segment: int,
        holding: Holding | None,
        stopping: asyncio.Event,
        how: Pass,
        report: SweepReport,
    ) -> None:
        position = await self._start(holding)
        origin = Origin(table, sweep_arn(table, self._rules.tables[table].expiry_index), segment_id(segment))
        while not stopping.is_set() and (holding is None or not holding.lost):
            window = self._window(table, how)
            await self._budget.wait()
            page = await self._page(table, window, segment, position.start)
            self._budget.spend(page.read_units)
            self._metrics.sweep_pages.labels(table).inc()
            self._metrics.sweep_read_units.labels(table).inc(page.read_units)
            report.pages, report.read_units = report.pages + 1, report.read_units + page.read_units
            for key in page.items:
                if stopping.is_set() or (holding is not None and holding.lost):
                    return  # this page is swept again: deletes are conditional, plans idempotent
                await self._candidate(origin, key, window, how, report)
            done = page.start is None
            finished = self._clock().timestamp() if done else None
            position = SweepPosition(position.number, position.page + 1, page.start, finished)
            if holding is not None:
                await self._positions.save(holding.lease, position)
            if done:
                self._finished(table, segment, position)
                return

    async def _start(self, holding: Holding | None) -> SweepPosition:
        """Where to go on: the stored position of an unfinished pass, else page 0 of the next pass."""
        stored = await self._positions.load(holding.lease) if holding is not None else None
        if stored is None:
            return SweepPosition(1, 0)
        if stored.finished_at is not None:
            return SweepPosition(stored.number + 1, 0)
        log.info("sweep.resumed", segment=holding.lease.shard_id if holding else None, page=stored.page)
        return stored

    def _finished(self, table: str, segment: int, position: SweepPosition) -> None:
        self._metrics.sweep_passes.labels(table).inc()
        self._metrics.sweep_last_pass.labels(table).set(position.finished_at or 0.0)
        log.info(
            "sweep.pass_finished",
            table=table,
            segment=segment,
            sweep_pass=position.number,
            pages=position.page,
        )

    def _window(self, table: str, how: Pass) -> ExpiryWindow:
        now = self._clock()
        grace = self._settings.expiry_grace_seconds if how.grace is None else how.grace
        attribute = self._rules.tables[table].ttl_attribute
        assert attribute is not None  # noqa: S101 - sweepable() kept only tables with one
        return ExpiryWindow(attribute, int((now - TTL_HORIZON).timestamp()), int(now.timestamp() - grace))

    # -- candidates ------------------------------------------------------------------------------------
    async def _candidate(
        self, origin: Origin, key: Image, window: ExpiryWindow, how: Pass, report: SweepReport
    ) -> None:
        table = origin.table
        self._metrics.sweep_candidates.labels(table).inc()
        report.candidates += 1
        ttl = key.get(window.ttl_attribute)
        ids = {name: value for name, value in key.items() if name != window.ttl_attribute}
        if how.dry_run:
            report.due.append((table, ids, int(_seconds(ttl))))
            return
        image = await self._found.enforce(table, ids, window)
        if image is None:
            self._counted(table, "skipped", report)
            log.info(
                "sweep.skipped", table=table, key_hash=key_hash(table, ids), why="ttl extended or item gone"
            )
            return
        record = self._removal(ids, image)
        outcome = await self._processor.process(origin, record)
        if isinstance(outcome, Deleted | Filtered):
            self._counted(table, "enforced", report)
            if isinstance(outcome, Deleted):
                grace = self._settings.expiry_grace_seconds if how.grace is None else how.grace
                deadline = _seconds(ttl) + grace
                self._metrics.observe_enforced(table, outcome.completed_at.timestamp() - deadline)
            return
        self._counted(table, "left_to_stream", report)
        log.warning(
            "sweep.left_to_stream", table=table, key_hash=key_hash(table, ids), outcome=type(outcome).__name__
        )

    def _removal(self, keys: Image, image: Image) -> StreamRecord:
        """The REMOVE the stream will carry for this delete, made now from the image the delete returned."""
        now = self._clock()
        sequence = f"{int(now.timestamp() * 1_000_000)}{next(self._sequence) % 1_000_000:06d}"
        return StreamRecord(
            event_id=f"sweep-{sequence}",
            event_name=EventName.REMOVE,
            sequence_number=sequence,
            created_at=now,
            keys=keys,
            old_image=image,
            view_type=StreamViewType.NEW_AND_OLD_IMAGES,
            by_ttl_service=False,
        )

    def _counted(self, table: str, outcome: str, report: SweepReport) -> None:
        self._metrics.sweep_items.labels(table, outcome).inc()
        setattr(report, outcome, getattr(report, outcome) + 1)


def _seconds(ttl: object) -> float:
    """A due item's TTL (a DynamoDB Number, so a Decimal) as epoch seconds."""
    return float(decimal.Decimal(str(ttl)))
