"""The coordinator's lease rules, one behaviour per test, on the in-memory fakes and a hand-turned monotonic
clock: renewals survive failures for exactly a lease period, expiry is a counter standing still for a lease
period, lineage is written parents first, and every lease transition is counted and logged by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from conftest import World, fast_settings
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from reconciler.coordination import SHARD_SYNC, Coordinator
from reconciler.core.leases import Lease
from reconciler.errors import TransientError
from reconciler.observability.metrics import Metrics
from reconciler.testing import FakeLeaseStore, FakeStreamSource

LEASE = 0.25  # a binary fraction: start + LEASE - start == LEASE exactly, so the boundary is testable
START = 100.0  # a monotonic clock far from zero: a sum where a difference belongs shows at once
SETTINGS = fast_settings(lease_seconds=LEASE, heartbeat_seconds=0.05, leases_to_take=4)
TABLE = "transcripts"


class FlakyLeases(FakeLeaseStore):
    """The lease table, with writes that fail for chosen shards (a throttled or partitioned table)."""

    failing_renewals: set[str]
    failing_releases: set[str]
    lost_takes: set[str]

    def __init__(self) -> None:
        super().__init__()
        self.failing_renewals, self.failing_releases, self.lost_takes = set(), set(), set()

    async def renew(self, lease: Lease) -> Lease | None:
        if lease.shard_id in self.failing_renewals:
            raise TransientError(f"renewal of {lease.shard_id} throttled")
        return await super().renew(lease)

    async def release(self, lease: Lease) -> bool:
        if lease.shard_id in self.failing_releases:
            raise TransientError(f"release of {lease.shard_id} throttled")
        return await super().release(lease)

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        if lease.shard_id in self.lost_takes:
            return None  # another worker took it between the read and the write
        return await super().take(lease, owner)


@dataclass
class Desk:
    """One coordinator on the fakes, with its own registry and a clock the test turns."""

    world: World
    owner: str = "a"
    source: FakeStreamSource = field(default_factory=FakeStreamSource)
    leases: FlakyLeases = field(default_factory=FlakyLeases)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    now: float = START

    def __post_init__(self) -> None:
        metrics = Metrics(self.registry)
        metrics.initialize(self.world.rules)
        self.coordinator = Coordinator(
            settings=SETTINGS,
            rules=self.world.rules,
            source=self.source,
            leases=self.leases,
            metrics=metrics,
            owner=self.owner,
            monotonic=lambda: self.now,
        )

    @property
    def arn(self) -> str:
        return self.source.arn(TABLE)

    def row(self, shard_id: str) -> Lease:
        return self.leases.rows[self.arn, shard_id]

    def seed(self, shard_id: str, owner: str | None = None, **changes: object) -> None:
        """A lease row as another worker (or an earlier life of this one) left it."""
        lease = dataclasses.replace(Lease(self.arn, shard_id, TABLE, owner=owner), **changes)  # type: ignore[arg-type]
        self.leases.rows[lease.key] = lease

    def leading(self) -> bool:
        """Whether this worker holds the shard-sync lease (a call, so each check reads it afresh)."""
        return self.coordinator.leading

    def held(self) -> set[str]:
        return {shard_id for _, shard_id in self.coordinator.held}

    def gauge(self, name: str, table: str = TABLE) -> float:
        return self.registry.get_sample_value(name, {"table": table}) or 0.0

    def transitions(self, transition: str) -> float:
        labels = {"table": TABLE, "transition": transition}
        return self.registry.get_sample_value("reconciler_lease_transitions_total", labels) or 0.0

    async def start(self) -> None:
        await self.coordinator.discover(TABLE)


@pytest.fixture
async def desk(world: World) -> Desk:
    made = Desk(world)
    await made.start()
    return made


def _events(logs: Sequence[Mapping[str, object]], event: str) -> list[Mapping[str, object]]:
    return [entry for entry in logs if entry["event"] == event]


# -- renewals ------------------------------------------------------------------------------------------
async def test_a_lease_that_cannot_be_renewed_is_kept_for_exactly_a_lease_period_then_lost(
    desk: Desk,
) -> None:
    desk.seed("s1")
    await desk.coordinator.balance()
    desk.leases.failing_renewals.add("s1")
    desk.now = START + LEASE / 2
    with capture_logs() as logs:
        assert await desk.coordinator.renew() == []
    assert desk.held() == {"s1"}
    assert _events(logs, "lease.renew_failed") == [
        {
            "event": "lease.renew_failed",
            "shard": "s1",
            "error": "renewal of s1 throttled",
            "log_level": "warning",
        }
    ]
    desk.now = START + LEASE  # a lease period since the last renewal: a peer may hold it now
    assert await desk.coordinator.renew() == [(desk.arn, "s1")]
    assert desk.held() == set()


async def test_a_successful_renewal_restarts_the_lease_period(desk: Desk) -> None:
    desk.seed("s1")
    await desk.coordinator.balance()
    desk.now = START + LEASE * 0.75
    assert await desk.coordinator.renew() == []
    desk.leases.failing_renewals.add("s1")
    desk.now = START + LEASE * 1.5  # past a lease period since the take, within one since the renewal
    assert await desk.coordinator.renew() == []
    assert desk.held() == {"s1"}


async def test_one_lease_failing_to_renew_does_not_hold_back_the_others(desk: Desk) -> None:
    for shard in ("s1", "s2", "s3"):
        desk.seed(shard)
    await desk.coordinator.balance()
    first = next(iter(desk.coordinator.held))[1]  # renewed first
    desk.leases.failing_renewals = {first}
    counters = {shard: desk.row(shard).counter for shard in ("s1", "s2", "s3")}
    await desk.coordinator.renew()
    renewed = {shard for shard in counters if desk.row(shard).counter > counters[shard]}
    assert renewed == {"s1", "s2", "s3"} - {first}


async def test_a_lease_taken_by_another_worker_is_lost_at_the_next_renewal(desk: Desk) -> None:
    desk.seed("s1")
    await desk.coordinator.balance()
    await desk.leases.take(desk.row("s1"), "b")
    assert await desk.coordinator.renew() == [(desk.arn, "s1")]
    assert desk.held() == set()
    desk.coordinator.drop((desk.arn, "s1"))  # idempotent


# -- expiry, balance, reclaim ----------------------------------------------------------------------------
async def test_a_lease_expires_when_its_counter_stands_still_for_exactly_a_lease_period(desk: Desk) -> None:
    desk.seed("s1", "b", token="t", counter=5)
    assert await desk.coordinator.balance() == []  # first seen now
    desk.now = START + LEASE
    with capture_logs() as logs:
        [taken] = await desk.coordinator.balance()
    assert (taken.shard_id, taken.owner) == ("s1", "a")
    assert desk.transitions("expired") == 1
    assert _events(logs, "lease.taken") == [
        {"event": "lease.taken", "table": TABLE, "shard": "s1", "how": "expired", "log_level": "info"}
    ]


async def test_a_take_lost_to_another_worker_does_not_stop_the_other_takes(desk: Desk) -> None:
    for shard in ("s1", "s2", "s3"):
        desk.seed(shard)
    desk.leases.lost_takes = {"s1", "s2"}
    taken = await desk.coordinator.balance()
    assert [lease.shard_id for lease in taken] == ["s3"]
    assert desk.held() == {"s3"}
    assert desk.transitions("taken") == 1


async def test_a_row_written_before_leases_existed_is_taken_as_its_streams_table(desk: Desk) -> None:
    desk.leases.positions[desk.arn, "legacy"] = "000000000000000000007"  # a checkpoint row, no table
    [taken] = await desk.coordinator.balance()
    assert (taken.table, taken.checkpoint) == (TABLE, "000000000000000000007")
    assert desk.gauge("reconciler_leases_held") == 1


async def test_leases_in_this_workers_name_are_reclaimed_only_in_its_first_lease_period(world: World) -> None:
    early, late = Desk(world), Desk(world)
    for desk in (early, late):
        await desk.start()
        desk.seed("s1", "a", token="old-life", counter=3)
    early.now = START + LEASE * 0.9
    assert [lease.shard_id for lease in await early.coordinator.balance()] == ["s1"]
    late.now = START + LEASE  # from here on, such a lease was given up by this process: it must expire
    assert await late.coordinator.balance() == []


async def test_the_shard_sync_lease_of_an_earlier_life_is_reclaimed_at_once(desk: Desk) -> None:
    desk.leases.rows[SHARD_SYNC.key] = dataclasses.replace(SHARD_SYNC, owner="a", token="old-life", counter=3)
    await desk.coordinator.lead()
    assert desk.leading()


async def test_a_shard_sync_lease_whose_holder_stopped_is_taken_after_a_lease_period(desk: Desk) -> None:
    desk.leases.rows[SHARD_SYNC.key] = dataclasses.replace(SHARD_SYNC, owner="b", token="t", counter=3)
    await desk.coordinator.lead()
    assert not desk.leading()
    desk.now = START + LEASE
    with capture_logs() as logs:
        await desk.coordinator.lead()
    assert desk.leading()
    assert [entry["event"] for entry in logs] == ["lease.shard_sync_taken"]


async def test_the_shard_sync_lease_survives_failed_renewals_for_a_lease_period_only(desk: Desk) -> None:
    await desk.coordinator.lead()
    assert desk.leading()
    desk.now = START + LEASE * 0.75
    await desk.coordinator.lead()  # renewed: the period restarts here
    desk.leases.failing_renewals.add(SHARD_SYNC.shard_id)
    desk.now = START + LEASE * 1.5
    with capture_logs() as logs:
        await desk.coordinator.lead()
    assert desk.leading()
    assert logs == [
        {"event": "lease.renew_failed", "shard": "shard-sync", "error": "renewal of shard-sync throttled",
         "log_level": "warning"}
    ]  # fmt: skip
    desk.now = START + LEASE * 1.75
    with capture_logs() as logs:
        await desk.coordinator.lead()
    assert not desk.leading()
    assert [entry["event"] for entry in logs] == ["lease.renew_failed", "lease.shard_sync_lost"]


# -- lineage --------------------------------------------------------------------------------------------
async def test_a_listing_adds_leases_parents_first_and_counts_them(desk: Desk) -> None:
    for shard, parent in (("g2", "g1"), ("g1", "g0"), ("g0", None)):  # listed youngest first
        desk.source.add_shard(TABLE, shard, parent=parent)
    with capture_logs() as logs:
        assert await desk.coordinator.sync(TABLE) == 3
    assert list(desk.leases.rows) == [(desk.arn, "g0"), (desk.arn, "g1"), (desk.arn, "g2")]
    assert logs == [{"event": "lineage.synced", "table": TABLE, "shards": 3, "added": 3, "log_level": "info"}]
    assert await desk.coordinator.sync(TABLE) == 0


async def test_a_listing_keeps_parents_that_are_listed_or_leased_and_drops_those_long_gone(
    desk: Desk,
) -> None:
    desk.seed("leased-parent")  # still has a lease, but DescribeStream no longer lists it
    desk.source.add_shard(TABLE, "listed-parent")
    desk.source.add_shard(TABLE, "a", parent="listed-parent")
    desk.source.add_shard(TABLE, "b", parent="leased-parent")
    desk.source.add_shard(TABLE, "c", parent="gone")  # aged out of the stream and its lease expired
    assert await desk.coordinator.sync(TABLE) == 4
    parents = {shard: desk.row(shard).parents for shard in ("listed-parent", "a", "b", "c")}
    assert parents == {"listed-parent": (), "a": ("listed-parent",), "b": ("leased-parent",), "c": ()}


async def test_an_ended_shard_gives_up_its_lease_and_adds_its_childrens_leases(desk: Desk) -> None:
    desk.source.add_shard(TABLE, "grandparent")
    desk.source.add_shard(TABLE, "parent", parent="grandparent")
    desk.source.split(TABLE, "parent", ["left", "right"])
    desk.seed("other")
    desk.seed("parent", parents=("grandparent",))
    await desk.coordinator.balance()
    assert desk.held() == {"other", "parent"}
    with capture_logs() as logs:
        await desk.coordinator.shard_ended(desk.coordinator.held[desk.arn, "parent"])
    assert desk.held() == {"other"}
    assert desk.gauge("reconciler_leases_held") == 1
    assert desk.row("left").parents == desk.row("right").parents == ("parent",)
    assert logs == [
        {
            "event": "lineage.shard_ended",
            "shard": "parent",
            "children": ["left", "right"],
            "log_level": "info",
        }
    ]


# -- shutdown and the view -----------------------------------------------------------------------------
async def test_release_all_gives_up_every_lease_even_when_some_releases_fail(desk: Desk) -> None:
    for shard in ("s1", "s2"):
        desk.seed(shard)
    await desk.coordinator.balance()
    await desk.coordinator.lead()
    desk.leases.failing_releases = {"s1", SHARD_SYNC.shard_id}
    with capture_logs() as logs:
        await desk.coordinator.release_all()
    assert desk.held() == set()
    assert not desk.leading()
    assert desk.row("s2").owner is None
    assert desk.transitions("released") == 1
    assert desk.gauge("reconciler_leases_held") == 0
    assert logs == [
        {"event": "lease.release_failed", "shard": "s1", "error": "release of s1 throttled",
         "log_level": "warning"},
        {"event": "lease.release_failed", "shard": "shard-sync", "error": "release of shard-sync throttled",
         "log_level": "warning"},
        {"event": "lease.released_all", "log_level": "info"},
    ]  # fmt: skip


async def test_the_gauges_show_held_unleased_and_live_owners_per_stream(desk: Desk) -> None:
    desk.seed("free")
    desk.seed("b1", "b", token="t")
    desk.seed("c1", "c", token="t")
    desk.seed("stale", "d", token="t")
    await desk.coordinator.balance()  # takes "free"; every counter is first seen now
    desk.leases.rows[desk.arn, "b1"] = dataclasses.replace(desk.row("b1"), counter=9)  # b renews
    desk.leases.rows[desk.arn, "c1"] = dataclasses.replace(desk.row("c1"), counter=9)  # c renews
    # d stopped: the counter of "stale" stands still
    desk.leases.lost_takes = {"stale"}
    desk.now = START + LEASE
    await desk.coordinator.balance()
    assert desk.gauge("reconciler_leases_held") == 1
    assert desk.gauge("reconciler_shards_unleased") == 1  # "stale": expired, and its take was lost
    assert desk.gauge("reconciler_lease_owners") == 3  # a, b, c: not d
