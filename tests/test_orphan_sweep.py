"""The orphan sweep on the in-memory fakes: what it keeps (an unresolvable key, an object no rule names, a
live owner's) and that a key whose versions run over a page boundary loses every version."""

from __future__ import annotations

import datetime as dt

from prometheus_client import CollectorRegistry

from reconciler.core.reverse import KeyType, KeyTypes
from reconciler.observability.metrics import Metrics
from reconciler.orphans import OrphanSweep
from reconciler.rules import Rules
from reconciler.testing import FakeArtifactStore, FakeItemStore

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
OLD = NOW - dt.timedelta(days=2)
STRINGS: KeyTypes = {
    "transcripts": {"transcript_id": KeyType.STRING},
    "speech_outputs": {"transcript_id": KeyType.STRING, "output_type": KeyType.STRING},
    "llm_requests": {"request_id": KeyType.STRING},
}


def _sweep(
    rules: Rules, artifacts: FakeArtifactStore, items: FakeItemStore, key_types: KeyTypes = STRINGS
) -> tuple[OrphanSweep, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.initialize(rules.compile())
    sweep = OrphanSweep(
        rules.compile(), key_types, artifacts, items, metrics, lambda: NOW, dt.timedelta(days=1)
    )
    return sweep, registry


async def test_an_orphan_whose_versions_span_listing_pages_loses_every_version(rules: Rules) -> None:
    artifacts = FakeArtifactStore(page_size=2)
    artifacts.put("stt-uploads", "acct-1/907/audio.wav", versions=5, modified=OLD)
    artifacts.put("stt-uploads", "acct-1/908/audio.wav", versions=3, modified=OLD)
    items = FakeItemStore()
    items.put("transcripts", {"transcript_id": "908"})
    sweep, _ = _sweep(rules, artifacts, items)
    report = await sweep.sweep(dry_run=False)
    assert artifacts.keys("stt-uploads") == {"acct-1/908/audio.wav"}
    assert len(artifacts.buckets["stt-uploads"]) == 3
    assert (report.deleted, report.versions_deleted, report.kept) == (1, 5, 1)


async def test_an_orphan_sweep_keeps_unresolvable_and_unowned_objects_and_deletes_nothing_in_a_dry_run(
    rules: Rules,
) -> None:
    artifacts = FakeArtifactStore()
    artifacts.put("stt-uploads", "acct-1/907/audio.wav", modified=OLD)  # "907": a string or a number?
    artifacts.put("stt-uploads", "loose.txt", modified=OLD)  # no template names it
    artifacts.put("stt-uploads", "acct-1/tr-1/audio.wav", modified=OLD)  # an orphan
    before = list(artifacts.buckets["stt-uploads"])
    sweep, registry = _sweep(rules, artifacts, FakeItemStore(), key_types={})
    dry = await sweep.sweep(dry_run=True)
    assert artifacts.buckets["stt-uploads"] == before
    assert [o.key for o in dry.orphans] == ["acct-1/tr-1/audio.wav"]
    assert dry.unresolvable == 1
    labels = {"table": "transcripts", "reason": "key_type_unknown"}
    assert registry.get_sample_value("reconciler_orphans_unresolvable_total", labels) == 1
    report = await sweep.sweep(dry_run=False)
    assert report.deleted == 1
    assert artifacts.keys("stt-uploads") == {"acct-1/907/audio.wav", "loose.txt"}


async def test_an_object_with_a_young_version_on_the_next_page_is_kept_whole(rules: Rules) -> None:
    """The newest version decides the age, even when the listing splits the object's versions."""
    artifacts = FakeArtifactStore(page_size=2)
    artifacts.put("stt-uploads", "acct-1/907/audio.wav", versions=3, modified=OLD)
    artifacts.put("stt-uploads", "acct-1/907/audio.wav", modified=NOW - dt.timedelta(hours=1))
    sweep, _ = _sweep(rules, artifacts, FakeItemStore())
    report = await sweep.sweep(dry_run=False)
    assert len(artifacts.buckets["stt-uploads"]) == 4
    assert (report.deleted, report.young) == (0, 1)
