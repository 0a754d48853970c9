"""Shadow mode (``reconciler run --dry-run``) on the in-memory fakes: the real pipeline reports what a real
run would delete, refuse and dead-letter, and deletes and writes nothing."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence

import pytest
import structlog.testing
from conftest import World, fast_settings
from pydantic import ValidationError

from reconciler.core.outcomes import DeadLettered, Deleted, Ignored, Outcome
from reconciler.core.plan import LinkQuery, Unsafe, UnsafeReason
from reconciler.core.records import StreamRecord, Undecodable, decode_record
from reconciler.errors import PermanentError
from reconciler.execution import Executor, ScopedUnsafe
from reconciler.observability.metrics import SHADOW_TARGET_KINDS
from reconciler.processing import Origin, RecordProcessor
from reconciler.settings import Settings
from reconciler.shadow import ReadOnlyArtifacts, ReadOnlyItems, ShadowDeadLetters, ShadowReport
from reconciler.testing import FakeLeaseStore, FakeStreamSource, eventually, stream_record
from reconciler.worker import SHADOW, Collaborators, Worker

ORIGIN = Origin("transcripts", "arn:aws:dynamodb:us-east-1:1:table/transcripts/stream/x", "shardId-0001")
SECRET = "board meeting: the layoffs"  # image content that no event may carry
LIVE_SERIES = (
    "reconciler_artifacts_total",
    "reconciler_unsafe_targets_total",
    "reconciler_dead_letters_total",
    "reconciler_deletions_unfinished_total",
    "reconciler_deletion_lag_seconds_count",
    "reconciler_pipeline_lag_seconds_count",
)


def _shadow_processor(world: World, *, dry_run: bool = True) -> RecordProcessor:
    """The pipeline as ``build_worker`` wires it for a dry run, on the world's fakes and registry."""
    artifacts, items = ReadOnlyArtifacts(world.artifacts), ReadOnlyItems(world.items)
    return RecordProcessor(
        rules=world.rules,
        executor=Executor(world.rules, artifacts, items, world.metrics, dry_run=dry_run),
        dead_letters=ShadowDeadLetters(world.metrics),
        metrics=world.metrics,
        clock=world.clock,
        items=items,
        shadow=ShadowReport(world.metrics),
    )


def _records(world: World) -> list[StreamRecord | Undecodable]:
    """A TTL expiry (with a delete marker), a customer request, one whose linked item points outside its
    scope, an undecodable record, a removal without its old image, and an insert."""
    world.add_transcript("acct-1", "tr-1", versions=3)
    world.artifacts.mark_deleted("stt-transcripts", "acct-1/tr-1/transcript.json")
    world.add_transcript("acct-1", "tr-2")
    world.add_transcript("acct-1", "tr-3")
    world.artifacts.put("stt-llm-gateway", "acct-9/other/input.json")  # someone else's
    (tr3_llm,) = (r for r in world.items.tables["llm_requests"] if r["transcript_id"] == "tr-3")
    tr3_llm["input_url"] = "s3://stt-llm-gateway/acct-9/other/input.json"
    future = int(world.clock.now.timestamp()) + 86400
    images = [
        (world.image("acct-1", "tr-1") | {"title": SECRET}, "botocore"),
        (world.image("acct-1", "tr-2", future) | {"title": SECRET}, None),
        (world.image("acct-1", "tr-3"), "botocore"),
    ]
    raws = [
        stream_record(n, old_image=image, identity=identity, created_at=world.clock.now)
        for n, (image, identity) in enumerate(images, start=1)
    ]
    bad = stream_record(4, old_image={"transcript_id": "tr-4", "title": SECRET})
    bad["dynamodb"]["OldImage"]["title"] = {"Z": "bad"}  # type: ignore[index]
    keys_only = stream_record(5, old_image={"transcript_id": "tr-5"}, view_type="KEYS_ONLY")
    del keys_only["dynamodb"]["OldImage"]  # type: ignore[attr-defined]
    insert = stream_record(6, event="INSERT", old_image=world.image("acct-1", "tr-6"))
    return [decode_record(raw) for raw in [*raws, bad, keys_only, insert]]


async def _each(processor: RecordProcessor, records: Sequence[StreamRecord | Undecodable]) -> list[Outcome]:
    return [await processor.process(ORIGIN, record) for record in records]


def _live(world: World) -> float:
    return sum(
        sample.value
        for family in world.registry.collect()
        for sample in family.samples
        if sample.name in LIVE_SERIES
    )


async def test_a_shadow_run_counts_what_a_real_run_then_deletes_and_deletes_nothing(world: World) -> None:
    records = _records(world)
    world.metrics.initialize_shadow(world.rules)
    buckets, tables = copy.deepcopy(world.artifacts.buckets), copy.deepcopy(world.items.tables)

    shadow = await _each(_shadow_processor(world), records)

    assert world.artifacts.buckets == buckets
    assert world.items.tables == tables
    assert world.dead_letters.letters == {}
    assert _live(world) == 0  # nothing deleted, refused or dead-lettered, no lag: nothing happened
    assert world.sample("reconciler_shadow_targets_total", table="transcripts", cause="ttl", kind="item") == 6
    assert world.sample("reconciler_shadow_records_total", table="transcripts", cause="requested") == 1

    real = await _each(world.processor, records)

    assert (
        [type(o) for o in shadow] == [type(o) for o in real] == [Deleted] * 3 + [DeadLettered] * 2 + [Ignored]
    )
    for kind in SHADOW_TARGET_KINDS:
        would = sum(
            world.sample("reconciler_shadow_targets_total", table="transcripts", cause=c, kind=kind)
            for c in ("ttl", "expired", "requested")
        )
        assert would == world.sample("reconciler_artifacts_total", kind=kind, outcome="deleted") > 0, kind
    for cause in ("ttl", "requested"):
        deleted = sum(isinstance(o, Deleted) and o.cause is not None and o.cause.value == cause for o in real)
        assert world.sample("reconciler_shadow_records_total", table="transcripts", cause=cause) == deleted
    refused = {"table": "llm_requests", "reason": "out_of_scope"}
    assert world.sample("reconciler_shadow_refusals_total", **refused) == 1
    assert world.sample("reconciler_unsafe_targets_total", **refused) == 1
    for kind in ("unsafe", "undecodable", "no_image"):
        assert world.sample("reconciler_shadow_dead_letters_total", table="transcripts", kind=kind) == 1
        assert world.sample("reconciler_dead_letters_total", kind=kind) == 1


async def test_shadow_events_name_identifiers_and_s3_keys_never_image_content(world: World) -> None:
    records = _records(world)

    with structlog.testing.capture_logs() as logs:
        await _each(_shadow_processor(world), records)

    names = [e["event"] for e in logs]
    assert names.count("shadow.would_delete") == 3
    assert names.count("shadow.would_refuse") == 1
    assert sorted(e["kind"] for e in logs if e["event"] == "shadow.would_dead_letter") == [
        "no_image",
        "undecodable",
        "unsafe",
    ]
    assert not {"deletion.completed", "deletion.unsafe_target"} & set(names)
    first = next(e for e in logs if e["event"] == "shadow.would_delete")
    assert first["cause"] == "ttl"
    assert (first["object_versions"], first["delete_markers"], first["items"]) == (12, 1, 3)
    assert first["linked_items"] == {"llm_requests": 1, "speech_outputs": 2}
    assert "s3://stt-uploads/acct-1/tr-1/audio.wav" in first["s3_keys"]
    assert SECRET not in repr(logs)


def test_shadow_refusals_are_all_counted_and_logged_up_to_a_cap(world: World) -> None:
    refused = [
        ScopedUnsafe(
            "transcripts", {"transcript_id": "t"}, Unsafe(f"s3://b/{n}", UnsafeReason.OUT_OF_SCOPE, "")
        )
        for n in range(150)
    ]
    with structlog.testing.capture_logs() as logs:
        ShadowReport(world.metrics).would_refuse(refused, log_at_most=100)
    labels = {"table": "transcripts", "reason": "out_of_scope"}
    assert world.sample("reconciler_shadow_refusals_total", **labels) == 150
    assert [e["event"] for e in logs].count("shadow.would_refuse") == 100
    (summary,) = [e for e in logs if e["event"] == "shadow.refusals_not_logged"]
    assert summary["count"] == 50


async def test_the_shadow_stores_refuse_to_delete_even_when_the_executor_would(world: World) -> None:
    """Defence in depth: a shadow pipeline whose executor was wired without ``dry_run`` still deletes
    nothing; the record is reported as a dead letter a real run would not have written."""
    (record, *_) = _records(world)
    buckets, tables = copy.deepcopy(world.artifacts.buckets), copy.deepcopy(world.items.tables)

    with structlog.testing.capture_logs() as logs:
        outcome = await _shadow_processor(world, dry_run=False).process(ORIGIN, record)

    assert isinstance(outcome, DeadLettered)
    assert "dry run: DeleteObjects on" in outcome.reason
    assert _live(world) == 0  # not even the unfinished deletion a real run's dead letter would count
    assert world.artifacts.buckets == buckets
    assert world.items.tables == tables
    assert {"shadow.write_refused", "shadow.would_dead_letter"} <= {e["event"] for e in logs}
    query = LinkQuery("llm_requests", "transcript_id", "tr-1", "by_transcript")
    with pytest.raises(PermanentError):
        await ReadOnlyItems(world.items).delete_linked(query, {"request_id": "tr-1-llm0"})


def test_a_dry_run_keeps_its_leases_in_its_own_table(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(config="r.toml").lease_table == "reconciler-checkpoints"
    monkeypatch.setenv("RECONCILER_DRY_RUN", "true")
    shadow = Settings(config="r.toml", checkpoint_table="prod-leases")
    assert (shadow.dry_run, shadow.lease_table) == (True, "reconciler-shadow-checkpoints")
    monkeypatch.setenv("RECONCILER_SHADOW_CHECKPOINT_TABLE", "team-shadow")
    assert Settings(config="r.toml").lease_table == "team-shadow"


@pytest.mark.parametrize(
    "tables",
    [
        {"shadow_checkpoint_table": "reconciler-checkpoints"},
        {"shadow_checkpoint_table": "prod-leases", "checkpoint_table": "prod-leases"},
        {"shadow_checkpoint_table": "reconciler-dead-letters"},
        {"shadow_checkpoint_table": "reconciler-receipts"},
    ],
)
def test_a_dry_run_refuses_a_lease_table_a_real_worker_uses(tables: dict[str, str]) -> None:
    with pytest.raises(
        ValidationError, match="must differ from the checkpoint, dead-letter and receipt tables"
    ):
        Settings.model_validate({"config": "r.toml", "dry_run": True} | tables)


async def test_a_shadow_worker_says_so_at_start_and_in_every_readiness_answer(world: World) -> None:
    source = FakeStreamSource()
    source.add_shard("transcripts", "shardId-1")
    parts = Collaborators(source, FakeLeaseStore(), world.processor, world.metrics)
    worker = Worker(fast_settings(dry_run=True), world.rules, parts, clock=world.clock)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: worker.readiness()[0])
            assert worker.readiness() == (True, SHADOW + "consuming 1 shards")
        finally:
            worker.handle_exit()
            await asyncio.wait_for(task, timeout=5)
    assert worker.readiness() == (False, SHADOW + "shutting down")
    (warning,) = [e for e in logs if e["event"] == "worker.shadow_mode"]
    assert (warning["log_level"], warning["lease_table"]) == ("warning", "reconciler-shadow-checkpoints")
    assert SHADOW.startswith("SHADOW MODE")
