"""The orphan sweep's linked items, on the in-memory fakes: an item whose every parent is gone goes with its
files once its created attribute says it is old; a live parent's, a sibling's, a young one, an undated one,
an unresolvable one and one re-linked between check and delete all stay."""

from __future__ import annotations

import datetime as dt
import decimal
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from reconciler.core.dynamodb_json import Image
from reconciler.core.parents import created_at
from reconciler.core.plan import LinkQuery, key_hash
from reconciler.observability.metrics import Metrics
from reconciler.orphans import OrphanReport, OrphanSweep
from reconciler.rules import Rules, load_rules
from reconciler.sweep_once import orphans_text
from reconciler.sweeper import ReadBudget
from reconciler.testing import FakeArtifactStore, FakeItemStore

ROOT = Path(__file__).parent.parent
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
OLD = decimal.Decimal(int((NOW - dt.timedelta(days=2)).timestamp()))
YOUNG = (NOW - dt.timedelta(hours=1)).isoformat()
LLM = "stt-llm-gateway"


def _demo_rules(**created: str) -> Rules:
    """The demo's rules, with ``created_attribute`` set on the tables named."""
    data = tomllib.loads((ROOT / "reconciler" / "demo" / "rules.toml").read_text())
    for spec in data["tables"].values():
        spec.pop("created_attribute", None)
    for table, attribute in created.items():
        data["tables"][table]["created_attribute"] = attribute
    return Rules.model_validate(data)


def _request(
    items: FakeItemStore, artifacts: FakeArtifactStore, transcript: str, n: int, **extra: object
) -> str:
    request = f"{transcript}#llm{n}"
    url = f"s3://{LLM}/acct-1/{request}/input.json"
    artifacts.put(LLM, f"acct-1/{request}/input.json", versions=2)
    artifacts.put(LLM, f"acct-1/{request}/output.json")  # under its prefix, named by no attribute
    items.put("llm_requests", {"request_id": request, "transcript_id": transcript, "account_id": "acct-1",
                               "input_url": url, **extra})  # fmt: skip
    return request


def _sweep(
    rules: Rules, artifacts: FakeArtifactStore, items: FakeItemStore
) -> tuple[OrphanSweep, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    spec = rules.compile()
    metrics.initialize(spec)
    sweep = OrphanSweep(
        spec, {}, artifacts, items, metrics, lambda: NOW, dt.timedelta(days=1), linked=items,
        read_budget=ReadBudget(1e9),
    )  # fmt: skip
    return sweep, registry


def _requests(items: FakeItemStore) -> set[object]:
    return {row["request_id"] for row in items.tables["llm_requests"]}


async def test_an_orphan_sweep_deletes_linked_items_whose_parent_is_gone_with_their_files_only() -> None:
    artifacts, items = FakeArtifactStore(), FakeItemStore()
    items.put("transcripts", {"transcript_id": "9070", "account_id": "acct-1"})
    dead = [_request(items, artifacts, "907", n, created_at=OLD) for n in range(3)]  # parent 907 is gone
    sibling = _request(items, artifacts, "9070", 0, created_at=OLD)  # its parent is there
    young = _request(items, artifacts, "907", 3, created_at=YOUNG)
    undated = _request(items, artifacts, "907", 4)
    naive = _request(items, artifacts, "907", 5, created_at="2026-01-01T00:00:00")  # which zone?
    sweep, registry = _sweep(_demo_rules(llm_requests="created_at"), artifacts, items)

    with capture_logs() as logs:
        dry = await sweep.sweep(dry_run=True)
    assert sorted(str(o.key["request_id"]) for o in dry.items.orphans) == dead
    listed = orphans_text(dry, dry_run=True)
    parent = key_hash("transcripts", {"transcript_id": "907"})
    assert f"would delete: item llm_requests {key_hash('llm_requests', {'request_id': dead[0]})}" in listed
    assert listed.count(f" parent transcripts {parent}") == 3
    assert "907" not in listed  # key hashes only
    assert "orphan items: 3 (dry run: nothing deleted), items scanned: 7," in listed
    assert len(_requests(items)) == 7
    assert len(artifacts.buckets[LLM]) == 7 * 3

    report = (await sweep.sweep(dry_run=False)).items
    assert _requests(items) == {sibling, young, undated, naive}
    assert artifacts.keys(LLM) == {
        f"acct-1/{r}/{p}.json" for r in _requests(items) for p in ("input", "output")
    }
    assert (report.deleted, report.versions_deleted, report.young, report.unaged) == (3, 9, 1, 2)
    assert report.kept == 1  # the sibling
    deleted = {"kind": "item", "table": "llm_requests"}
    assert registry.get_sample_value("reconciler_orphans_deleted_total", deleted) == 3
    assert registry.get_sample_value("reconciler_orphans_found_total", deleted) == 3 + 3  # dry run too
    assert registry.get_sample_value("reconciler_orphans_unaged_total", {"table": "llm_requests"}) == 2 + 2
    unaged = [e for e in logs if e["event"] == "orphans.unaged"]
    assert len(unaged) == 2
    assert all(set(e) == {"event", "log_level", "table", "key_hash", "created_attribute"} for e in unaged)


async def test_a_linked_item_without_a_created_attribute_in_the_rules_is_reported_and_kept() -> None:
    artifacts, items = FakeArtifactStore(), FakeItemStore()
    _request(items, artifacts, "907", 0, created_at=OLD)
    sweep, registry = _sweep(_demo_rules(), artifacts, items)
    report = (await sweep.sweep(dry_run=False)).items
    assert (report.unaged, report.deleted, len(items.tables["llm_requests"])) == (1, 0, 1)
    assert registry.get_sample_value("reconciler_orphans_unaged_total", {"table": "llm_requests"}) == 1


async def test_linked_tables_whose_links_cannot_name_a_parent_are_not_read_and_are_logged() -> None:
    """The demo's speech outputs are checked against {parent.account_id}, not in the transcript's key; a
    single-table output links to its transcript by PK, half of its key: neither is scanned."""
    artifacts, items = FakeArtifactStore(), FakeItemStore()
    url = "s3://stt-understanding/acct-1/907/translation.json"
    items.put("speech_outputs", {"transcript_id": "907", "output_type": "translation", "created_at": OLD,
                                 "output_url": url})  # fmt: skip
    single = tomllib.loads((ROOT / "tests" / "rules" / "single_table.toml").read_text())
    single["tables"]["app"]["created_attribute"] = "created_at"
    items.put("app", {"PK": "JOB#1", "SK": "OUTPUT#de", "tenant": "TENANT#acme", "created_at": OLD})
    for rules, table, reason in [
        (_demo_rules(speech_outputs="created_at"), "speech_outputs", "parent_scope"),
        (Rules.model_validate(single), "app", "partial_key"),
    ]:
        sweep, _ = _sweep(rules, artifacts, items)
        with capture_logs() as logs:
            report = (await sweep.sweep(dry_run=False)).items
        assert (report.deleted, len(items.tables[table])) == (0, 1)
        unswept = {e["table"]: e["reasons"] for e in logs if e["event"] == "orphans.items_unswept"}
        assert unswept[table] == [reason]
        assert report.pages == (1 if table == "speech_outputs" else 0)  # the demo's llm_requests are read


async def test_an_item_whose_parent_key_cannot_render_the_links_scopes_is_unresolvable() -> None:
    data = _two_parents()
    data["tables"]["a"]["links"][0] |= {"scope": "both", "scopes": ["s3://bkt/a/{parent.a_id}/"]}
    data["tables"]["child"]["created_attribute"] = "created"
    artifacts, items = FakeArtifactStore(), FakeItemStore()
    items.put("child", {"child_id": "c0", "a_ref": "x/..", "created": OLD})  # no parent renders "x/.."
    sweep, registry = _sweep(Rules.model_validate(data), artifacts, items)
    report = (await sweep.sweep(dry_run=False)).items
    assert (report.unresolvable, report.deleted, len(items.tables["child"])) == (1, 0, 1)
    labels = {"table": "child", "reason": "parent_scope"}
    assert registry.get_sample_value("reconciler_orphans_unresolvable_total", labels) == 1


def _two_parents() -> dict[str, Any]:
    """Tables a and b both link to child items (by a_ref and b_ref), which have their own files."""
    return {
        "buckets": ["bkt"], "sources": ["a", "b"],
        "tables": {
            "a": {"key": ["a_id"], "links": [{"table": "child", "attribute": "a_ref", "value_from": "a_id"}]},
            "b": {"key": ["b_id"], "links": [{"table": "child", "attribute": "b_ref", "value_from": "b_id"}]},
            "child": {"key": ["child_id"], "scopes": ["s3://bkt/c/{child_id}/"], "prefixes": ["s3://bkt/c/{child_id}/"]},
        },
    }  # fmt: skip


async def test_an_item_linked_from_two_parents_is_an_orphan_only_when_both_are_gone() -> None:
    artifacts, items = FakeArtifactStore(), FakeItemStore()
    for n, (a, b) in enumerate([("gone", "gone"), ("gone", "here"), ("here", "gone")]):
        items.put("child", {"child_id": f"c{n}", "a_ref": a, "b_ref": b, "created": OLD})
        artifacts.put("bkt", f"c/c{n}/file")
    items.put("a", {"a_id": "here"})
    items.put("b", {"b_id": "here"})
    data = _two_parents()
    data["tables"]["child"]["created_attribute"] = "created"
    sweep, _ = _sweep(Rules.model_validate(data), artifacts, items)
    report = (await sweep.sweep(dry_run=False)).items
    assert {row["child_id"] for row in items.tables["child"]} == {"c1", "c2"}
    assert artifacts.keys("bkt") == {"c/c1/file", "c/c2/file"}
    assert (report.deleted, report.kept) == (1, 2)


class _Relinking(FakeItemStore):
    """Re-links an item to a live parent just before its conditional delete (after its files went)."""

    def __init__(self, relink: Mapping[str, object]) -> None:
        super().__init__()
        self.relink = dict(relink)

    async def delete_linked(self, query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        for row in self.tables[query.table]:
            if all(row.get(k) == v for k, v in key.items()):
                row.update(self.relink)
        return await super().delete_linked(query, key)


async def test_a_linked_item_re_linked_between_check_and_delete_stays() -> None:
    artifacts, items = FakeArtifactStore(), _Relinking({"transcript_id": "9070"})
    items.put("transcripts", {"transcript_id": "9070", "account_id": "acct-1"})
    request = _request(items, artifacts, "907", 0, created_at=OLD)
    sweep, registry = _sweep(_demo_rules(llm_requests="created_at"), artifacts, items)
    with capture_logs() as logs:
        report: OrphanReport = await sweep.sweep(dry_run=False)
    assert _requests(items) == {request}
    assert (report.items.deleted, report.items.kept) == (0, 1)
    assert (
        registry.get_sample_value(
            "reconciler_orphans_deleted_total", {"kind": "item", "table": "llm_requests"}
        )
        == 0
    )
    assert [e["reason"] for e in logs if e["event"] == "orphans.kept"] == ["changed_or_refused"]


def test_a_created_attribute_reads_epoch_seconds_or_a_zoned_iso_time_and_nothing_else() -> None:
    assert created_at(decimal.Decimal(0)) == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert created_at("2026-05-30T00:00:00+02:00") == dt.datetime(2026, 5, 29, 22, tzinfo=dt.UTC)
    assert created_at("2026-05-30T00:00:00Z") == dt.datetime(2026, 5, 30, tzinfo=dt.UTC)
    naive, numbers = ["2026-05-30T00:00:00", "2026-05-30"], [decimal.Decimal("1e400"), decimal.Decimal("NaN")]
    for unreadable in [*naive, *numbers, "1700000000", True, None, ["2026-05-30T00:00:00Z"]]:
        assert created_at(unreadable) is None, unreadable


@pytest.mark.parametrize(
    ("table", "attribute", "message"),
    [("a", "created", "nothing links here"), ("child", "expires_at", "cannot be the TTL attribute")],
)
def test_a_created_attribute_is_for_linked_tables_only_and_is_not_the_ttl(
    table: str, attribute: str, message: str
) -> None:
    data = _two_parents()
    data["tables"]["child"]["ttl_attribute"] = "expires_at"
    data["tables"][table]["created_attribute"] = attribute
    with pytest.raises(ValueError, match=message):
        Rules.model_validate(data)


def test_the_example_rules_date_their_linked_items() -> None:
    rules = load_rules(ROOT / "deploy" / "example" / "rules.toml").compile()
    assert {t: rules.tables[t].created_attribute for t in ("speech_outputs", "llm_requests")} == {
        "speech_outputs": "created_at",
        "llm_requests": "created_at",
    }
