"""A record's independent steps run at once within ``fanout``; a linked item goes after its artifacts."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from conftest import World

from reconciler.core.dynamodb_json import Image
from reconciler.core.plan import DeletionPlan, LinkQuery, resolve
from reconciler.core.scope import S3Location
from reconciler.core.spec import RuleSet
from reconciler.execution import Executor
from reconciler.observability.metrics import Metrics
from reconciler.ports import DeleteReport, ObjectVersion
from reconciler.testing import FakeArtifactStore, FakeItemStore, eventually


@dataclass
class Gauge:
    """Counts calls in flight; while ``gate`` is clear every call waits on it."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    peak: int = 0
    calls: int = 0

    async def enter(self) -> None:
        self.in_flight += 1
        self.calls += 1
        self.peak = max(self.peak, self.in_flight)
        await self.gate.wait()
        await asyncio.sleep(0)  # let other calls in, so an open gate still interleaves them

    def leave(self) -> None:
        self.in_flight -= 1


@dataclass
class GatedArtifacts(FakeArtifactStore):
    gauge: Gauge = field(default_factory=Gauge)

    async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        await self.gauge.enter()
        try:
            return await super().delete_versions(bucket, versions)
        finally:
            self.gauge.leave()


@dataclass
class CheckedItems(FakeItemStore):
    """Fails the test if a linked item is deleted while an object it points at is still there."""

    artifacts: FakeArtifactStore = field(default_factory=FakeArtifactStore)
    gauge: Gauge = field(default_factory=Gauge)

    async def delete_linked(self, query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        await self.gauge.enter()
        try:
            row = await self.get(query.table, key)
            url = str((row or {}).get("output_url", ""))
            assert url.split("/", 3)[3] not in self.artifacts.keys("stt-understanding"), "artifacts first"
            return await super().delete_linked(query, key)
        finally:
            self.gauge.leave()


def _transcript_with_outputs(
    world: World, artifacts: FakeArtifactStore, items: FakeItemStore, n: int
) -> DeletionPlan:
    image = world.image("acct-1", "tr-1")
    artifacts.put("stt-uploads", "acct-1/tr-1/audio.wav")
    artifacts.put("stt-transcripts", "acct-1/tr-1/transcript.json")
    for i in range(n):
        key = f"acct-1/tr-1/out-{i}.json"
        artifacts.put("stt-understanding", key)
        items.put(
            "speech_outputs",
            {
                "transcript_id": "tr-1",
                "output_type": f"out-{i}",
                "account_id": "acct-1",
                "output_url": f"s3://stt-understanding/{key}",
            },
        )
    return resolve(world.rules.tables["transcripts"], image)


def _executor(
    rules: RuleSet, artifacts: FakeArtifactStore, items: FakeItemStore, world: World, fanout: int
) -> Executor:
    return Executor(rules, artifacts, items, Metrics(type(world.registry)()), fanout=fanout)


@pytest.mark.parametrize("fanout", [1, 4, 16])
async def test_a_records_deletes_run_at_once_up_to_the_fanout_and_never_more(
    world: World, fanout: int
) -> None:
    artifacts = GatedArtifacts()
    plan = _transcript_with_outputs(world, artifacts, world.items, 40)
    running = asyncio.create_task(_executor(world.rules, artifacts, world.items, world, fanout).execute(plan))

    await eventually(lambda: artifacts.gauge.in_flight == fanout)
    for _ in range(20):  # give any step that could start beyond the bound the chance to
        await asyncio.sleep(0)
    assert artifacts.gauge.in_flight == fanout
    artifacts.gauge.gate.set()
    result = await running

    assert artifacts.gauge.peak == fanout
    assert result.errors == []
    assert result.tally.items == 40
    assert (artifacts.keys("stt-understanding"), world.items.tables["speech_outputs"]) == (set(), [])


async def test_each_linked_item_is_deleted_only_after_its_own_artifacts_whatever_the_interleaving(
    world: World,
) -> None:
    artifacts = FakeArtifactStore()
    items = CheckedItems(artifacts=artifacts)
    items.gauge.gate.set()
    plan = _transcript_with_outputs(world, artifacts, items, 200)

    result = await _executor(world.rules, artifacts, items, world, 16).execute(plan)

    assert result.errors == []
    assert result.tally.items == 200
    assert 1 < items.gauge.peak <= 16


async def test_nested_plans_finish_even_with_one_slot(world: World) -> None:
    """A step waiting on its nested plan never holds what that plan needs (no deadlock at fanout 1)."""
    world.add_transcript("acct-1", "tr-1")
    plan = resolve(world.rules.tables["transcripts"], world.image("acct-1", "tr-1"))

    async with asyncio.timeout(5):
        result = await _executor(world.rules, world.artifacts, world.items, world, 1).execute(plan)

    assert result.errors == []
    assert world.held_by("acct-1", "tr-1") == 0


async def test_results_are_merged_in_plan_order_whatever_finishes_first(world: World) -> None:
    """A dry run lists what it would delete in the order the sequential run did."""
    plans = []
    for fanout in (1, 16):
        artifacts, items = FakeArtifactStore(), FakeItemStore()
        plan = _transcript_with_outputs(world, artifacts, items, 30)
        executor = Executor(world.rules, artifacts, items, world.metrics, dry_run=True, fanout=fanout)
        plans.append((await executor.execute(plan)).planned)
    assert plans[0] == plans[1]
    assert len(plans[0]) == 2 + 30 * 2


async def test_a_fanout_below_one_is_refused(world: World) -> None:
    with pytest.raises(ValueError, match="fanout"):
        Executor(world.rules, world.artifacts, world.items, world.metrics, fanout=0)


SCOPE = S3Location("stt-transcripts", "acct-1/tr-1/")


async def test_purging_past_many_refused_pages_lists_each_page_about_once(world: World) -> None:
    """Each relisting starts after the last refused version, not from the start (which was quadratic)."""
    world.artifacts.page_size = 2
    for n in range(40):
        world.artifacts.put("stt-transcripts", f"acct-1/tr-1/f{n:02}")
        if n < 30:
            world.artifacts.refuse[f"acct-1/tr-1/f{n:02}"] = "AccessDenied"
    plan = DeletionPlan("transcripts", {"transcript_id": "tr-1"}, (SCOPE,), (), (SCOPE,), (), ())

    result = await world.executor.execute(plan)

    assert "30 versions" in str(result.errors[0])
    assert result.tally.object_versions == 10
    assert world.artifacts.keys("stt-transcripts") == {f"acct-1/tr-1/f{n:02}" for n in range(30)}
    assert world.artifacts.pages_listed <= 40 // 2 + 1  # each page once, and a last, empty one
