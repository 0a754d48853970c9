"""The orphan sweep on moto: after an outage in which items were deleted and no stream record was processed,
one sweep deletes every version of every object whose owners are all gone, and nothing of a live item, of a
live sibling whose id begins the same way, or of an object younger than the minimum age; the worker runs it
by itself."""

from __future__ import annotations

import asyncio
import datetime as dt
import tomllib
from collections.abc import Mapping

import pytest
from conftest import DEMO_RULES, until_scheduled_run, worker_env
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from reconciler.adapters.aws import AwsSettings
from reconciler.adapters.dynamodb import DynamoDBItemStore
from reconciler.app import build_orphan_sweep
from reconciler.cli import main
from reconciler.core.dynamodb_json import Image
from reconciler.core.plan import LinkQuery
from reconciler.demo.layout import BUCKETS, Layout, Transcript, artifacts_of, expiry
from reconciler.demo.moto_server import CREDENTIALS, REGION
from reconciler.demo.run import local_settings
from reconciler.rules import Rules

pytestmark = pytest.mark.integration
DAY = 86400


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _outage(layout: Layout, gone: list[Transcript]) -> None:
    """Items deleted straight in DynamoDB while no worker runs: no stream record is ever processed."""
    for t in gone:
        await layout.dynamodb.delete_item(
            TableName="transcripts", Key={"transcript_id": {"S": t.transcript_id}}
        )
        for request in t.requests:
            await layout.dynamodb.delete_item(TableName="llm_requests", Key={"request_id": {"S": request}})


async def test_an_orphan_sweep_after_an_outage_deletes_every_orphan_and_nothing_else(
    endpoint: str, layout: Layout, rules: Rules
) -> None:
    later = expiry(_now(), DAY)
    dead = [Transcript("acct-1", "907", later), Transcript("acct-1", "old-1", later)]
    live = [Transcript("acct-1", "9070", later), Transcript("acct-1", "90", later)]
    await layout.add([*dead, *live])
    between = _now()
    await asyncio.sleep(1.1)  # S3 listings give LastModified to the second: the young ones are a second later
    young = [Transcript("acct-1", "young", later)]
    await layout.add(young)
    await _outage(layout, [*dead, *young])
    before = await layout.snapshot([*live, *young])
    assert [await layout.remaining(t) for t in dead] == [3 + 17, 3 + 17]  # 3 speech_outputs items, 17 objects

    registry = CollectorRegistry()
    settings = local_settings(endpoint)  # orphan_min_age_seconds: a day, the default
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    clock = lambda: between + dt.timedelta(days=1)  # noqa: E731 - a clock one day after the first uploads
    async with build_orphan_sweep(settings, rules, registry, aws, clock) as sweep:
        with capture_logs() as logs:
            report = await sweep.sweep(dry_run=False)

    for t in dead:
        assert await layout.remaining(t) == 3, t  # only the speech_outputs items: the sweep deletes objects
    assert await layout.snapshot([*live, *young]) == before
    orphans = sum(len({(b, k) for b, k, _ in artifacts_of(t)}) for t in dead)
    assert report.deleted == len(report.orphans) == orphans
    assert report.young == len({(b, k) for b, k, _ in artifacts_of(young[0])})
    assert (
        registry.get_sample_value(
            "reconciler_orphans_deleted_total", {"kind": "object", "table": "transcripts"}
        )
        == 2 * 8
    )
    assert (
        registry.get_sample_value(
            "reconciler_orphans_deleted_total", {"kind": "object", "table": "llm_requests"}
        )
        == 2 * 4
    )
    assert (registry.get_sample_value("reconciler_orphan_pages_total") or 0) >= len(BUCKETS)
    found = [e for e in logs if e["event"] == "orphans.found"]
    assert len(found) == orphans
    assert all(
        set(e) == {"event", "log_level", "kind", "dry_run", "bucket", "key", "table", "key_hash", "versions"}
        for e in found
    )


async def test_an_orphan_sweep_dry_run_lists_orphans_by_key_hash_and_deletes_nothing(
    endpoint: str, layout: Layout, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dead, live = (
        Transcript("acct-2", "907", expiry(_now(), DAY)),
        Transcript("acct-2", "9070", expiry(_now(), DAY)),
    )
    await layout.add([dead, live])
    await _outage(layout, [dead])
    before = await layout.snapshot([dead, live])
    for name, value in worker_env(endpoint).items():
        monkeypatch.setenv(name, value)
    args = ["sweep", "--once", "--orphans", "--config", str(DEMO_RULES), "--orphan-min-age-seconds", "0"]
    assert await asyncio.to_thread(main, [*args, "--dry-run", "--log-level", "ERROR"]) == 0
    listed = capsys.readouterr().out
    assert "would delete: s3://stt-uploads/acct-2/907/audio.wav (2 versions) owner transcripts " in listed
    assert "9070" not in listed
    assert "en-US" not in listed  # never item content
    assert await layout.snapshot([dead, live]) == before
    assert await asyncio.to_thread(main, [*args, "--log-level", "ERROR"]) == 0
    assert "deleted: 12 (17 versions)" in capsys.readouterr().out
    assert await layout.remaining(dead) == 3
    assert (await layout.snapshot([live])).items() <= before.items()


def _dated_demo_rules() -> Rules:
    """The demo's rules, with llm_requests dated by created_at."""
    data = tomllib.loads(DEMO_RULES.read_text())
    data["tables"]["llm_requests"]["created_attribute"] = "created_at"
    return Rules.model_validate(data)


async def test_an_orphan_sweep_after_an_outage_deletes_linked_items_whose_parent_is_gone_with_their_files(
    endpoint: str, layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """907's requests go (one of them re-linked to 9070 just before its delete stays); 9070's stay, and
    so do old-2's: one is younger than the minimum age, one has no created_at."""
    now, later = _now(), expiry(_now(), DAY)
    dead, live, other = (Transcript("acct-3", t, later) for t in ("907", "9070", "old-2"))
    await layout.add([dead, live, other])
    old = {"N": str(int((now - dt.timedelta(days=2)).timestamp()))}
    dated = {
        **dict.fromkeys([*dead.requests, *live.requests], old),
        other.requests[0]: {"S": now.isoformat()},
    }
    for request, created in dated.items():
        await _update("llm_requests", request, "created_at", created, layout)
    await layout.dynamodb.update_item(  # the layout dates every request: this one is undated
        TableName="llm_requests",
        Key={"request_id": {"S": other.requests[1]}},
        UpdateExpression="REMOVE created_at",
    )
    for t in (dead, other):  # the outage: the transcripts go, no stream record is ever processed
        await layout.dynamodb.delete_item(
            TableName="transcripts", Key={"transcript_id": {"S": t.transcript_id}}
        )
    before = await layout.snapshot([live, other])
    relinked = dead.requests[1]
    delete_linked = DynamoDBItemStore.delete_linked

    async def relinking(
        store: DynamoDBItemStore, query: LinkQuery, key: Mapping[str, object]
    ) -> Image | None:
        if key == {"request_id": relinked}:
            await _update("llm_requests", relinked, "transcript_id", {"S": "9070"}, layout)
        return await delete_linked(store, query, key)

    monkeypatch.setattr(DynamoDBItemStore, "delete_linked", relinking)
    registry = CollectorRegistry()
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with build_orphan_sweep(local_settings(endpoint), _dated_demo_rules(), registry, aws) as sweep:
        report = await sweep.sweep(dry_run=False)

    gone = dead.requests[0]
    assert await layout.versions("stt-llm-gateway", f"acct-3/{gone}/") == set()
    assert "Item" not in await layout.dynamodb.get_item(
        TableName="llm_requests", Key={"request_id": {"S": gone}}
    )
    kept = await layout.dynamodb.get_item(TableName="llm_requests", Key={"request_id": {"S": relinked}})
    assert kept["Item"]["transcript_id"] == {"S": "9070"}
    assert await layout.snapshot([live, other]) == before
    items = report.items
    assert (items.deleted, items.young, items.unaged, items.kept) == (1, 1, 1, 2 + 1)
    assert report.deleted == 0  # every object is younger than a day: only the item took its files along
    labels = {"kind": "item", "table": "llm_requests"}
    assert registry.get_sample_value("reconciler_orphans_deleted_total", labels) == 1


async def _update(table: str, request: str, attribute: str, value: dict[str, str], layout: Layout) -> None:
    await layout.dynamodb.update_item(
        TableName=table,
        Key={"request_id": {"S": request}},
        UpdateExpression="SET #a = :v",
        ExpressionAttributeNames={"#a": attribute},
        ExpressionAttributeValues={":v": value},
    )


async def test_the_worker_runs_the_orphan_sweep_on_its_schedule_with_no_cli_call(
    endpoint: str, layout: Layout, rules: Rules
) -> None:
    live = Transcript("acct-4", "live", expiry(_now(), DAY))
    await layout.add([live])
    ghost = "acct-4/ghost/audio.wav"  # no item ever named it: no stream record will
    await layout.s3.put_object(Bucket="stt-uploads", Key=ghost, Body=b"left behind")
    before = await layout.snapshot([live])
    settings = local_settings(endpoint, orphan_sweep=True, orphan_min_age_seconds=0)
    registry = await until_scheduled_run(endpoint, settings, rules, "orphans")
    assert await layout.versions("stt-uploads", ghost) == set()
    assert await layout.snapshot([live]) == before
    assert (
        registry.get_sample_value(
            "reconciler_orphans_deleted_total", {"kind": "object", "table": "transcripts"}
        )
        == 1
    )
