"""Several workers on one stream, in one process, over the in-memory fakes: shards shared through leases,
lineage kept across splits, failover after a crash or a graceful stop, and a rebalance that never leaves two
workers reading one shard for longer than a lease period.

Timing: leases last 1 s and heartbeats come every 0.05 s; no test sleeps longer than a lease period, and
every wait is ``eventually`` on the fakes' state."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from conftest import World, fast_settings
from prometheus_client import CollectorRegistry

from reconciler.adapters.streams import RateLimit
from reconciler.core.leases import Lease
from reconciler.core.outcomes import Outcome
from reconciler.core.records import StreamRecord, Undecodable
from reconciler.errors import TransientError
from reconciler.observability.metrics import Metrics
from reconciler.ports import RecordsPage, Shard, StreamInfo
from reconciler.processing import Origin
from reconciler.settings import Settings
from reconciler.testing import FakeLeaseStore, FakeStreamSource, eventually, stream_record
from reconciler.worker import Collaborators, Worker

LEASE = 1.0
SETTINGS = fast_settings(lease_seconds=LEASE, heartbeat_seconds=0.05, discovery_seconds=0.1)


@dataclass
class Reads:
    """Who read which shard when (monotonic seconds), across every worker."""

    log: list[tuple[str, str, float]] = field(default_factory=list)

    def by(self, worker: str, shard: str) -> list[float]:
        return [t for w, s, t in self.log if (w, s) == (worker, shard)]


class TracedSource:
    """One worker's view of the shared stream: every read is logged with the worker's name."""

    def __init__(self, source: FakeStreamSource, name: str, reads: Reads) -> None:
        self._source, self._name, self._reads = source, name, reads

    async def describe(self, table: str) -> StreamInfo:
        return await self._source.describe(table)

    async def shards(self, stream_arn: str) -> list[Shard]:
        return await self._source.shards(stream_arn)

    async def children(self, shard: Shard) -> list[Shard]:
        return await self._source.children(shard)

    async def iterator(self, shard: Shard, after: str | None) -> str:
        return await self._source.iterator(shard, after)

    async def records(self, iterator: str, limit: int) -> RecordsPage:
        self._reads.log.append((self._name, iterator.split("|", maxsplit=1)[0], time.monotonic()))
        return await self._source.records(iterator, limit)


@dataclass
class Cluster:
    world: World
    source: FakeStreamSource = field(default_factory=FakeStreamSource)
    leases: FakeLeaseStore = field(default_factory=FakeLeaseStore)
    reads: Reads = field(default_factory=Reads)
    workers: dict[str, Worker] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    registries: dict[str, CollectorRegistry] = field(default_factory=dict)
    processed: list[tuple[str, int]] = field(default_factory=list)  # (shard, sequence) in order
    sequence: int = 0

    def start(self, name: str, settings: Settings = SETTINGS, leases: object = None) -> Worker:
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        metrics.initialize(self.world.rules)
        parts = Collaborators(
            TracedSource(self.source, name, self.reads),
            leases or self.leases,  # type: ignore[arg-type]
            self.world.processor,
            metrics,
            owner=name,
        )
        worker = Worker(settings, self.world.rules, parts, clock=self.world.clock)
        self.workers[name], self.registries[name] = worker, registry
        self.tasks[name] = asyncio.create_task(worker.run(), name=name)
        return worker

    async def kill(self, name: str) -> None:
        """As SIGKILL: nothing is drained, checkpointed or released."""
        self.tasks[name].cancel()
        await asyncio.gather(self.tasks[name], return_exceptions=True)

    async def stop(self, name: str) -> None:
        """As SIGTERM: drain, checkpoint, release."""
        self.workers[name].handle_exit()
        await asyncio.wait_for(self.tasks[name], timeout=5)

    def held(self, name: str) -> set[str]:
        rows = self.leases.rows.values()
        return {lease.shard_id for lease in rows if lease.owner == name and lease.table}  # not the sync lease

    def transitions(self, name: str, transition: str, table: str = "transcripts") -> float:
        labels = {"table": table, "transition": transition}
        return self.registries[name].get_sample_value("reconciler_lease_transitions_total", labels) or 0.0

    def remove(self, shard: str, table: str = "transcripts") -> int:
        """A TTL removal of a new transcript on ``shard``; its sequence number."""
        self.sequence += 1
        transcript = f"tr-{self.sequence}"
        self.world.add_transcript("acct-1", transcript)
        image = self.world.image("acct-1", transcript)
        self.source.append(shard, stream_record(self.sequence, old_image=image, identity="botocore"))
        return self.sequence

    def all_deleted(self) -> bool:
        return all(self.world.held_by("acct-1", f"tr-{n}") == 0 for n in range(1, self.sequence + 1))


@pytest.fixture
async def cluster(world: World) -> AsyncIterator[Cluster]:
    made = Cluster(world)
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        made.processed.append((origin.shard_id, int(record.sequence_number)))
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    try:
        yield made
    finally:
        for task in made.tasks.values():
            task.cancel()
        await asyncio.gather(*made.tasks.values(), return_exceptions=True)


async def test_lease_replicas_share_the_shards_evenly_and_delete_every_record(cluster: Cluster) -> None:
    for n in range(6):
        cluster.source.add_shard("transcripts", f"shard-{n}")
        for _ in range(3):
            cluster.remove(f"shard-{n}")
    for name in ("a", "b", "c"):
        cluster.start(name)
    await eventually(lambda: sorted(len(cluster.held(n)) for n in "abc") == [2, 2, 2])
    await eventually(cluster.all_deleted)
    assert len({shard for shard, _ in cluster.processed}) == 6
    for name in "abc":
        await cluster.stop(name)


async def test_lease_only_the_shard_sync_holder_lists_the_stream(cluster: Cluster) -> None:
    """Three workers, one DescribeStream lister: the calls do not grow with the replicas."""
    cluster.source.add_shard("transcripts", "shard-0")
    for name in "abc":
        cluster.start(name)
    await eventually(lambda: any(cluster.held(n) for n in "abc"))
    await asyncio.sleep(SETTINGS.discovery_seconds * 3)
    leaders = [name for name, worker in cluster.workers.items() if worker.coordinator.leading]
    assert len(leaders) == 1
    # One listing per discovery interval, give or take the first: not three.
    assert cluster.source.listings <= 5


async def test_failover_a_killed_replicas_shards_are_taken_after_the_lease_period(cluster: Cluster) -> None:
    for n in range(4):
        cluster.source.add_shard("transcripts", f"shard-{n}")
        cluster.remove(f"shard-{n}")
    cluster.start("a")
    cluster.start("b")
    await eventually(lambda: len(cluster.held("a")) == 2 and len(cluster.held("b")) == 2)
    await eventually(cluster.all_deleted)
    orphaned = cluster.held("a")
    await cluster.kill("a")
    killed = time.monotonic()
    for shard in orphaned:  # written after the crash: only a new owner can delete these
        cluster.remove(shard)
    await eventually(lambda: cluster.held("b") == {f"shard-{n}" for n in range(4)}, seconds=5)
    taken = time.monotonic()
    await eventually(cluster.all_deleted)
    assert taken - killed >= LEASE * 0.9  # the owner's counter had to stand still for a lease period
    assert cluster.transitions("b", "expired") == len(orphaned)


async def test_failover_a_stopped_replica_releases_its_leases_and_a_peer_takes_them_at_once(
    cluster: Cluster,
) -> None:
    """With a 30 s lease, only a release explains a takeover within a few heartbeats."""
    slow_expiry = SETTINGS.model_copy(update={"lease_seconds": 30.0})
    for n in range(4):
        cluster.source.add_shard("transcripts", f"shard-{n}")
    cluster.start("a", slow_expiry)
    cluster.start("b", slow_expiry)
    await eventually(lambda: len(cluster.held("a")) == 2 and len(cluster.held("b")) == 2)
    released = cluster.held("a")
    await cluster.stop("a")
    assert cluster.transitions("a", "released") == len(released)
    for shard in released:
        cluster.remove(shard)
    await eventually(lambda: len(cluster.held("b")) == 4, seconds=2)
    await eventually(cluster.all_deleted, seconds=2)
    assert cluster.transitions("b", "expired") == 0


async def test_lease_a_new_replica_rebalances_without_two_readers_beyond_a_lease_period(
    cluster: Cluster,
) -> None:
    for n in range(4):
        cluster.source.add_shard("transcripts", f"shard-{n}")
    cluster.start("a")
    await eventually(lambda: len(cluster.held("a")) == 4)
    cluster.start("b")
    await eventually(lambda: len(cluster.held("a")) == 2 and len(cluster.held("b")) == 2)
    await asyncio.sleep(LEASE)  # long enough for a reader that failed to notice to show itself
    moved = cluster.held("b")
    assert cluster.transitions("b", "stolen") == len(moved)
    for shard in moved:
        first_b = min(cluster.reads.by("b", shard))
        last_a = max(cluster.reads.by("a", shard))
        assert last_a - first_b <= LEASE  # a stops reading within a heartbeat or two of losing it
    assert cluster.transitions("a", "lost") == len(moved)
    before = (cluster.held("a"), cluster.held("b"))
    await asyncio.sleep(LEASE)
    assert (cluster.held("a"), cluster.held("b")) == before  # balanced: no churn


async def test_split_children_start_once_their_parent_ends_without_waiting_for_a_listing(
    cluster: Cluster,
) -> None:
    """A split is picked up from the ended shard's CHILD_SHARDS answer: the full listing runs once a
    minute here, so only the direct lookup explains the children starting at once."""
    rarely = SETTINGS.model_copy(update={"discovery_seconds": 60.0})
    cluster.source.add_shard("transcripts", "parent")
    parent_records = [cluster.remove("parent") for _ in range(3)]
    cluster.start("a", rarely)
    await eventually(cluster.all_deleted)
    cluster.source.split("transcripts", "parent", ["left", "right"])
    children = [cluster.remove(child) for child in ("left", "right", "left")]
    await eventually(cluster.all_deleted, seconds=2)
    order = [sequence for _, sequence in cluster.processed]
    assert max(order.index(s) for s in parent_records) < min(order.index(s) for s in children)
    assert cluster.source.child_lookups >= 1
    assert cluster.source.listings == 1  # only the start-up listing
    ended = cluster.leases.rows[cluster.source.arn("transcripts"), "parent"]
    assert ended.ended


async def test_split_a_child_missing_from_the_lookup_is_found_by_the_next_listing(cluster: Cluster) -> None:
    """DescribeStream may briefly miss a new child: the shard-sync holder's next listing adds it."""
    cluster.source.add_shard("transcripts", "parent")
    cluster.remove("parent")
    cluster.source.hide_children = 100  # every direct lookup comes back empty
    cluster.start("a")
    await eventually(cluster.all_deleted)
    cluster.source.split("transcripts", "parent", ["child"])
    cluster.remove("child")
    await eventually(cluster.all_deleted, seconds=3)
    assert cluster.leases.rows[cluster.source.arn("transcripts"), "child"].parents == ("parent",)


async def test_lineage_is_kept_across_generations_and_workers(cluster: Cluster) -> None:
    """Three generations of splits read by two workers: no record of a child before its parent's last."""
    source = cluster.source
    source.add_shard("transcripts", "g0")
    cluster.remove("g0")
    source.split("transcripts", "g0", ["g1a", "g1b"])
    for shard in ("g1a", "g1b"):
        cluster.remove(shard)
    source.split("transcripts", "g1a", ["g2a", "g2b"])
    source.split("transcripts", "g1b", ["g2c"])
    for shard in ("g2a", "g2b", "g2c", "g2a"):
        cluster.remove(shard)
    cluster.start("a")
    cluster.start("b")
    await eventually(cluster.all_deleted, seconds=5)
    position = {shard_sequence: n for n, shard_sequence in enumerate(cluster.processed)}
    parent_of = {s.shard_id: s.parent_id for shards in source.by_stream.values() for s in shards}
    for (shard, _), n in position.items():
        parent = parent_of[shard]
        if parent:
            assert all(m < n for (other, _), m in position.items() if other == parent)


async def test_lease_two_source_tables_are_shared_by_two_replicas(cluster: Cluster, world: World) -> None:
    two_sources = dataclasses.replace(world.rules, sources=("transcripts", "llm_requests"))
    cluster.world = dataclasses.replace(world, rules=two_sources)
    for table in ("transcripts", "llm_requests"):
        for n in range(2):
            cluster.source.add_shard(table, f"{table}-{n}")
    for n in range(2):
        cluster.remove(f"transcripts-{n}")
    cluster.start("a")
    cluster.start("b")
    both = {f"{t}-{n}" for t in ("transcripts", "llm_requests") for n in range(2)}
    await eventually(lambda: cluster.held("a") | cluster.held("b") == both)
    assert len(cluster.held("a")) == len(cluster.held("b")) == 2
    await eventually(cluster.all_deleted)


async def test_failover_a_replica_that_cannot_renew_stops_its_shards(cluster: Cluster) -> None:
    """Cut off from the lease table, ``a`` keeps no shard past a lease period: ``b`` takes them, and ``a``
    stops reading before it would write another checkpoint."""
    cut_off = Unrenewable(cluster.leases)
    cluster.source.add_shard("transcripts", "shard-0")
    cluster.start("a", leases=cut_off)
    await eventually(lambda: cluster.held("a") == {"shard-0"})
    cut_off.failing = True
    cluster.start("b")
    await eventually(lambda: cluster.held("b") == {"shard-0"}, seconds=3)
    taken = time.monotonic()
    await eventually(lambda: not cluster.workers["a"]._consumers, seconds=2)
    assert all(t <= taken + LEASE for t in cluster.reads.by("a", "shard-0"))


class Unrenewable:
    """The shared lease table, as seen by a worker whose renewals fail (a throttled or partitioned one)."""

    def __init__(self, leases: FakeLeaseStore) -> None:
        self._leases = leases
        self.failing = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._leases, name)

    async def renew(self, lease: Lease) -> Lease | None:
        if self.failing:
            raise TransientError("AWS call failed after retries: ThrottlingException")
        return await self._leases.renew(lease)


async def test_a_describe_stream_rate_limit_spaces_the_calls_of_one_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(asyncio, "sleep", sleep)
    limit = RateLimit(per_second=5.0, monotonic=lambda: now[0])
    for _ in range(4):
        await limit.wait()
    assert slept == pytest.approx([0.2, 0.2, 0.2])  # the first call goes at once
