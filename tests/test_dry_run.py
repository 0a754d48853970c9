"""The dry run reads what a real run would delete through the same code path, and deletes nothing."""

from __future__ import annotations

import copy
from pathlib import Path

from conftest import World

from reconciler.core.plan import DeletionPlan, LinkQuery, resolve
from reconciler.execution import Executor, Planned
from reconciler.rules import load_rules
from reconciler.testing import FakeArtifactStore, FakeItemStore

SINGLE = load_rules(Path(__file__).parent / "rules" / "single_table.toml").compile()


def _versions(store: FakeArtifactStore) -> set[tuple[str, str]]:
    return {(f"s3://{b}/{v.key}", v.version_id) for b, versions in store.buckets.items() for v in versions}


async def test_a_dry_run_names_exactly_what_a_real_run_then_deletes_and_deletes_nothing(world: World) -> None:
    world.add_transcript("acct-1", "tr-1", versions=3)
    world.add_transcript("acct-1", "tr-2")
    world.items.tables["llm_requests"][0]["input_url"] = "s3://stt-llm-gateway/acct-9/x/in.json"  # refused
    plan = resolve(world.rules.tables["transcripts"], world.image("acct-1", "tr-1"))
    before_versions, before_items = _versions(world.artifacts), copy.deepcopy(world.items.tables)

    dry = await Executor(world.rules, world.artifacts, world.items, world.metrics, dry_run=True).execute(plan)

    assert _versions(world.artifacts) == before_versions
    assert world.items.tables == before_items
    assert dry.errors == []
    assert [s.unsafe.target for s in dry.unsafe] == ["s3://stt-llm-gateway/acct-9/x/in.json"]
    would_versions = {(p.where, p.what) for p in dry.planned if p.kind != "item"}
    would_items = {(p.where, p.what) for p in dry.planned if p.kind == "item"}
    assert all(p.kind in {"object_version", "delete_marker", "item"} for p in dry.planned)

    async def keep_refusals(_: object) -> bool:
        return True

    real = await world.executor.execute(plan, keep_refusals)
    assert real.errors == []
    assert before_versions - _versions(world.artifacts) == would_versions
    gone = {
        (table, ", ".join(f"{k}={row[k]}" for k in world.rules.tables[table].key))
        for table, rows in before_items.items()
        for row in rows
        if row not in world.items.tables[table]
    }
    assert gone == would_items
    assert ("speech_outputs", "transcript_id=tr-1, output_type=translation") in would_items
    assert dry.tally.absent == real.tally.absent == 0


async def test_a_dry_run_counts_a_location_with_nothing_as_absent(world: World) -> None:
    plan = resolve(world.rules.tables["transcripts"], world.image("acct-1", "gone"))
    dry = await Executor(world.rules, world.artifacts, world.items, world.metrics, dry_run=True).execute(plan)
    assert dry.planned == []
    assert dry.tally.absent == 2  # the audio object and the transcript prefix


async def test_a_dry_run_lists_delete_markers_as_such(world: World) -> None:
    world.artifacts.mark_deleted("stt-uploads", "acct-1/tr-1/audio.wav")
    plan = resolve(world.rules.tables["transcripts"], world.image("acct-1", "tr-1"))
    dry = await Executor(world.rules, world.artifacts, world.items, world.metrics, dry_run=True).execute(plan)
    (marker,) = [p for p in dry.planned if p.where.startswith("s3://stt-uploads/")]
    assert marker == Planned("delete_marker", "s3://stt-uploads/acct-1/tr-1/audio.wav", marker.what)


async def test_a_link_to_an_entity_type_skips_other_kinds_under_the_same_key(world: World) -> None:
    items = FakeItemStore()
    for sk in ("NOTE#1", "OUTPUT#de"):  # the other kind first: it is skipped, and the search goes on
        items.put("app", {"PK": "JOB#906", "SK": sk, "tenant": "TENANT#acme"})
    query = LinkQuery(
        "app", "PK", "JOB#906", None, entity="output"
    )  # no sort-key prefix: the query finds both
    executor = Executor(SINGLE, FakeArtifactStore(), items, world.metrics)

    result = await executor.execute(DeletionPlan("app", {}, (), (), (), (query,), ()))

    assert result.errors == []
    assert [row["SK"] for row in items.tables["app"]] == ["NOTE#1"]
    assert result.tally.items == 1


async def test_a_dry_run_lists_an_objects_own_versions_only_and_every_page(world: World) -> None:
    world.artifacts.page_size = 1
    world.artifacts.put("stt-uploads", "acct-1/tr-1/audio.wav", versions=3)
    world.artifacts.put("stt-uploads", "acct-1/tr-1/audio.wav.bak")  # shares the object's key as a prefix
    plan = resolve(world.rules.tables["transcripts"], world.image("acct-1", "tr-1"))
    dry = await Executor(world.rules, world.artifacts, world.items, world.metrics, dry_run=True).execute(plan)
    uploads = [p for p in dry.planned if p.where.startswith("s3://stt-uploads/")]
    assert [(p.kind, p.where) for p in uploads] == [
        ("object_version", "s3://stt-uploads/acct-1/tr-1/audio.wav")
    ] * 3
    assert dry.tally.absent == 1  # the transcript prefix held nothing; three pages of audio were found
