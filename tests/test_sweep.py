"""The expiry sweeper on in-memory fakes: what it deletes, what it never touches, who sweeps a segment, where
a pass resumes, and how fast it may read."""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
from collections.abc import Callable

import pytest
from conftest import World, fast_settings

from reconciler.core.classify import Cause
from reconciler.core.dynamodb_json import Image
from reconciler.core.spec import ExpiryIndex
from reconciler.ports import CandidatePage, ExpiryWindow
from reconciler.settings import Settings
from reconciler.sweeper import Pass, ReadBudget, Sweeper, segment_id, sweep_arn, sweepable
from reconciler.testing import FakeExpiredItems, FakeLeaseStore, FakeSweepPositions

DAY = 86400


def _settings(**overrides: object) -> Settings:
    return fast_settings(**({"sweep_segments": 2, "expiry_grace_seconds": 900} | overrides))


@dataclasses.dataclass
class Sweep:
    world: World
    found: FakeExpiredItems
    leases: FakeLeaseStore
    positions: FakeSweepPositions
    settings: Settings

    def sweeper(self, owner: str = "a", **kwargs: object) -> Sweeper:
        return Sweeper(
            settings=self.settings,
            rules=self.world.rules,
            found=kwargs.pop("found", self.found),  # type: ignore[arg-type]
            positions=self.positions,
            leases=self.leases,
            processor=self.world.processor,
            metrics=self.world.metrics,
            owner=owner,
            clock=self.world.clock,
            **kwargs,  # type: ignore[arg-type]
        )

    def add(self, transcript: str, ttl_from_now: float | None) -> None:
        """A transcript with its artifacts; its TTL ``ttl_from_now`` seconds away (None: no TTL)."""
        self.world.add_transcript("acct-1", transcript)
        now = int(self.world.clock().timestamp())
        image = self.world.image("acct-1", transcript, now + int(ttl_from_now or 0))
        if ttl_from_now is None:
            del image["expires_at"]
        self.world.items.put("transcripts", image)

    def present(self, transcript: str) -> bool:
        rows = self.world.items.tables.get("transcripts", [])
        return any(r["transcript_id"] == transcript for r in rows)


@pytest.fixture
def sweep(world: World) -> Sweep:
    found = FakeExpiredItems(world.items, {"transcripts": ("transcript_id",)})
    leases = FakeLeaseStore()
    return Sweep(world, found, leases, FakeSweepPositions(leases), _settings())


async def test_items_expired_days_ago_are_enforced_in_one_pass_with_every_artifact(sweep: Sweep) -> None:
    for n in range(6):
        sweep.add(f"old-{n}", -3 * DAY)
    report = await sweep.sweeper().sweep(asyncio.Event())
    assert report.enforced == report.candidates == 6
    assert all(sweep.world.held_by("acct-1", f"old-{n}") == 0 for n in range(6))
    assert sweep.world.sample("reconciler_sweep_items_total", table="transcripts", outcome="enforced") == 6
    assert sweep.world.sample("reconciler_enforcement_lag_seconds_count", table="transcripts") == 6
    assert sweep.world.sample("reconciler_sweep_passes_total", table="transcripts") == 2  # both segments
    assert sweep.world.sample(
        "reconciler_stream_records_total", table="transcripts", event="REMOVE", cause="expired"
    )


async def test_unexpired_items_within_grace_and_without_ttl_are_never_touched(sweep: Sweep) -> None:
    sweep.add("live", DAY)
    sweep.add("just-expired", -600)  # inside the 900 s grace: DynamoDB's TTL may still take it
    sweep.add("no-ttl", None)
    sweep.add("ancient", -6 * 365 * DAY)  # TTL ignores expiries over five years old: so does the sweeper
    before = {t: sweep.world.held_by("acct-1", t) for t in ("live", "just-expired", "no-ttl", "ancient")}
    report = await sweep.sweeper().sweep(asyncio.Event())
    assert report.candidates == 0
    assert sweep.found.deletes == 0
    assert {t: sweep.world.held_by("acct-1", t) for t in before} == before


async def test_a_ttl_extended_between_scan_and_delete_wins_and_the_item_stays(sweep: Sweep) -> None:
    sweep.add("extended", -2 * DAY)
    sweep.add("expired", -2 * DAY)
    held = sweep.world.held_by("acct-1", "extended")
    future = decimal.Decimal(int(sweep.world.clock().timestamp()) + 30 * DAY)

    def extend(page: CandidatePage) -> None:
        if any(item["transcript_id"] == "extended" for item in page.items):
            for row in sweep.world.items.tables["transcripts"]:
                if row["transcript_id"] == "extended":
                    row["expires_at"] = future

    sweep.found.after_scan = extend
    report = await sweep.sweeper().sweep(asyncio.Event())
    assert (report.candidates, report.enforced, report.skipped) == (2, 1, 1)
    assert sweep.present("extended")
    assert sweep.world.held_by("acct-1", "extended") == held
    assert not sweep.present("expired")
    assert sweep.world.sample("reconciler_sweep_items_total", table="transcripts", outcome="skipped") == 1


async def test_a_dry_run_lists_due_items_and_deletes_nothing(sweep: Sweep) -> None:
    sweep.add("old", -2 * DAY)
    sweep.add("live", DAY)
    report = await sweep.sweeper().sweep(asyncio.Event(), Pass(dry_run=True))
    assert [(t, dict(k)) for t, k, _ in report.due] == [("transcripts", {"transcript_id": "old"})]
    assert sweep.present("old")
    assert sweep.found.deletes == 0
    assert sweep.positions.saves == 0


async def test_expired_ignores_the_grace(sweep: Sweep) -> None:
    sweep.add("just-expired", -600)
    report = await sweep.sweeper().sweep(asyncio.Event(), Pass(force=True, grace=0))
    assert report.enforced == 1
    assert not sweep.present("just-expired")


class _Blocking:
    """Wraps the fake: each Scan waits for ``go``, after telling ``scanning``."""

    def __init__(self, inner: FakeExpiredItems) -> None:
        self.inner = inner
        self.scanning = asyncio.Event()
        self.go = asyncio.Event()

    async def scan(self, table: str, window: ExpiryWindow, **kwargs: object) -> CandidatePage:
        self.scanning.set()
        await self.go.wait()
        return await self.inner.scan(table, window, **kwargs)  # type: ignore[arg-type]

    async def enforce(self, table: str, key: Image, window: ExpiryWindow) -> Image | None:
        return await self.inner.enforce(table, key, window)


async def test_a_segment_is_swept_by_one_replica_at_a_time(sweep: Sweep) -> None:
    sweep = dataclasses.replace(sweep, settings=_settings(sweep_segments=1))
    sweep.add("old", -2 * DAY)
    blocking = _Blocking(sweep.found)
    first = asyncio.create_task(sweep.sweeper("a", found=blocking).sweep(asyncio.Event()))
    try:
        await asyncio.wait_for(blocking.scanning.wait(), timeout=10)
        row = sweep.leases.rows[(sweep_arn("transcripts"), segment_id(0))]
        assert row.owner == "a"
        second = await sweep.sweeper("b").sweep(asyncio.Event())
        assert (second.segments, second.pages, sweep.found.scans) == (0, 0, 0)
    finally:
        blocking.go.set()
    report = await asyncio.wait_for(first, timeout=10)
    assert report.enforced == 1
    assert (
        sweep.leases.rows[(sweep_arn("transcripts"), segment_id(0))].owner is None
    )  # released after the pass


async def test_a_restart_resumes_from_the_stored_position(sweep: Sweep) -> None:
    sweep = dataclasses.replace(sweep, settings=_settings(sweep_segments=1))
    for n in range(10):
        sweep.add(f"old-{n}", -2 * DAY)
    stopping = asyncio.Event()
    starts: list[Image | None] = []
    scan = sweep.found.scan

    async def recording(table: str, window: ExpiryWindow, **kwargs: object) -> CandidatePage:
        starts.append(kwargs["start"])  # type: ignore[arg-type]
        page = await scan(table, window, **kwargs)  # type: ignore[arg-type]
        if len(starts) == 2:
            stopping.set()  # SIGTERM during the second page: it is not finished, nor saved
        return page

    sweep.found.scan = recording  # type: ignore[method-assign]
    first = await sweep.sweeper("a", page_items=3).sweep(stopping)
    assert first.enforced == 3
    stored = sweep.positions.stored[(sweep_arn("transcripts"), segment_id(0))]
    assert (stored.number, stored.page, stored.finished_at) == (1, 1, None)
    second = await sweep.sweeper("b", page_items=3).sweep(asyncio.Event())
    assert starts[2] == stored.start  # the new replica goes on after the first page, not from the top
    assert first.enforced + second.enforced == 10
    assert sweep.positions.stored[(sweep_arn("transcripts"), segment_id(0))].finished_at is not None


async def test_a_finished_segment_waits_an_interval_before_its_next_pass(sweep: Sweep) -> None:
    sweep.add("old", -2 * DAY)
    sweeper = sweep.sweeper()
    await sweeper.sweep(asyncio.Event())
    scans = sweep.found.scans
    assert (await sweeper.sweep(asyncio.Event())).segments == 0
    assert sweep.found.scans == scans
    sweep.world.clock.advance(sweep.settings.sweep_interval_seconds)
    assert (await sweeper.sweep(asyncio.Event())).segments == 2


class _FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_the_read_budget_bounds_the_units_read_per_second(sweep: Sweep) -> None:
    """200 items at 0.5 units each, 10 per page (5 units): 100 units within a 10-unit-per-second budget."""
    sweep = dataclasses.replace(sweep, settings=_settings(sweep_segments=1, sweep_read_units_per_second=10))
    for n in range(200):
        sweep.add(f"live-{n}", DAY)
    time = _FakeTime()
    spent: list[tuple[float, float]] = []
    budget = ReadBudget(10, time.monotonic, time.sleep)
    record_spend: Callable[[float], None] = budget.spend

    def spend(units: float) -> None:
        spent.append((time.now, units))
        record_spend(units)

    budget.spend = spend  # type: ignore[method-assign]
    report = await sweep.sweeper(budget=budget, page_items=10).sweep(asyncio.Event())
    assert (report.pages, report.read_units) == (20, 100.0)
    burst = 10.0
    for at, _ in spent:  # by any moment, at most a second's burst plus the rate times the time so far
        assert sum(u for t, u in spent if t <= at) <= burst + 10 * at + 5  # + the page just read
    assert time.now >= (100 - burst - 5) / 10


def test_a_table_whose_expired_removals_do_not_cascade_is_not_swept(world: World) -> None:
    table = world.rules.tables["transcripts"]
    assert sweepable(table)
    narrowed = dataclasses.replace(
        table, cascade=dataclasses.replace(table.cascade, causes=frozenset({Cause.TTL}))
    )
    assert not sweepable(narrowed)
    assert not sweepable(dataclasses.replace(table, ttl_attribute=None))


async def test_a_sweep_of_a_table_with_an_expiry_index_queries_each_partition_and_never_scans(
    sweep: Sweep,
) -> None:
    """One segment (one lease) per partition value; an item outside the sparse index is left to TTL."""
    index = ExpiryIndex("by-expiry", "expiry_shard", ("s0", "s1", "s2"))
    table = dataclasses.replace(sweep.world.rules.tables["transcripts"], expiry_index=index)
    rules = dataclasses.replace(sweep.world.rules, tables={**sweep.world.rules.tables, "transcripts": table})
    sweep.world.rules = rules
    for n, shard in enumerate(["s0", "s1", "s1", None]):
        sweep.add(f"old-{n}", -3 * DAY)
        if shard is not None:
            row = next(r for r in sweep.world.items.tables["transcripts"] if r["transcript_id"] == f"old-{n}")
            row["expiry_shard"] = shard
    report = await sweep.sweeper().sweep(asyncio.Event())
    assert (report.enforced, report.segments, sweep.found.scans) == (3, 3, 0)
    assert [sweep.present(f"old-{n}") for n in range(4)] == [False, False, False, True]
    assert sweep_arn("transcripts", index) != sweep_arn("transcripts")  # a Scan's positions stay apart
    assert {key[1] for key in sweep.leases.rows if key[0] == sweep_arn("transcripts", index)} == {
        segment_id(n) for n in range(3)
    }
