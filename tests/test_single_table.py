"""A single-table layout on moto's server: composite keys, entity types, links by sort-key prefix, a GSI
link on a composite attribute, parent-scoped children and a grandchild in another table; and
`plan --resolve` names exactly what a real run then deletes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from reconciler.adapters.aws import AwsClients, AwsSettings, RetryPolicy
from reconciler.app import build_worker
from reconciler.cli import EXIT_UNSAFE, main
from reconciler.demo.moto_server import CREDENTIALS, REGION, reset, ttl_delete
from reconciler.demo.run import local_settings
from reconciler.rules import Rules, load_rules
from reconciler.testing import eventually

pytestmark = pytest.mark.integration

RULES_FILE = Path(__file__).parent / "rules" / "single_table.toml"


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _job(job: str, expires_at: int) -> list[tuple[str, dict[str, Any]]]:
    """A transcript of tenant acme, its two outputs (one with two segments), and one LLM-gateway request."""
    tenant = {"tenant": _s("TENANT#acme")}
    return [
        ("app", {"PK": _s(f"JOB#{job}"), "SK": _s("TRANSCRIPT"), **tenant, "ref": _s(f"acme#{job}"),
                 "audio_url": _s(f"s3://media/audio/acme/{job}/audio.wav"),
                 "expires_at": {"N": str(expires_at)}}),
        ("app", {"PK": _s(f"JOB#{job}"), "SK": _s("OUTPUT#de"), **tenant, "seg_ref": _s(f"{job}#de"),
                 "output_url": _s(f"s3://media/outputs/acme/{job}/de.json")}),
        ("app", {"PK": _s(f"JOB#{job}"), "SK": _s("OUTPUT#fr"), **tenant, "seg_ref": _s(f"{job}#fr"),
                 "output_url": _s(f"s3://media/outputs/acme/{job}/fr.json")}),
        *(("segments", {"seg_ref": _s(f"{job}#de"), "n": {"N": str(n)},
                        "chunk_url": _s(f"s3://media/outputs/acme/{job}/de/{n}.json")}) for n in range(2)),
        ("gateway", {"request_id": _s(f"REQ#{job}#1"), "job_ref": _s(f"acme#{job}"),
                     "input_url": _s(f"s3://media/llm/acme/{job}/REQ#{job}#1/in.json")}),
    ]  # fmt: skip


def _table(name: str, keys: list[tuple[str, str, str]], **extra: Any) -> dict[str, Any]:
    """CreateTable parameters: keys as (attribute, HASH or RANGE, S or N)."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [{"AttributeName": n, "KeyType": k} for n, k, _ in keys],
        "AttributeDefinitions": [{"AttributeName": n, "AttributeType": t} for n, _, t in keys],
        **extra,
    }


GSI = {"IndexName": "by_job", "KeySchema": [{"AttributeName": "job_ref", "KeyType": "HASH"}]}
TABLES = [
    _table(
        "app",
        [("PK", "HASH", "S"), ("SK", "RANGE", "S")],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    ),
    _table(
        "gateway",
        [("request_id", "HASH", "S")],
        GlobalSecondaryIndexes=[GSI | {"Projection": {"ProjectionType": "KEYS_ONLY"}}],
    ),
    _table("segments", [("seg_ref", "HASH", "S"), ("n", "RANGE", "N")]),
]
TABLES[1]["AttributeDefinitions"].append({"AttributeName": "job_ref", "AttributeType": "S"})


async def _create(clients: AwsClients) -> None:
    await clients.s3.create_bucket(Bucket="media")
    await clients.s3.put_bucket_versioning(Bucket="media", VersioningConfiguration={"Status": "Enabled"})
    for params in TABLES:
        await clients.dynamodb.create_table(**params)


@pytest.fixture
async def media(endpoint: str) -> AsyncIterator[AwsClients]:
    reset(endpoint)
    async with AwsClients(
        AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    ) as clients:
        await _create(clients)
        yield clients


async def _fill(clients: AwsClients, rows: list[tuple[str, dict[str, Any]]]) -> None:
    for table, item in rows:
        await clients.dynamodb.put_item(TableName=table, Item=item)
        for attribute in ("audio_url", "output_url", "chunk_url", "input_url"):
            if attribute in item:
                key = item[attribute]["S"].removeprefix("s3://media/")
                for version in range(2):
                    await clients.s3.put_object(Bucket="media", Key=key, Body=f"v{version}".encode())


async def _versions(clients: AwsClients) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    async for page in clients.s3.get_paginator("list_object_versions").paginate(Bucket="media"):
        for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            found.add((f"s3://media/{entry['Key']}", entry["VersionId"]))
    return found


async def _items(clients: AwsClients) -> set[tuple[str, str]]:
    keys = {"app": ("PK", "SK"), "gateway": ("request_id",), "segments": ("seg_ref", "n")}
    found: set[tuple[str, str]] = set()
    for table, names in keys.items():
        for item in (await clients.dynamodb.scan(TableName=table))["Items"]:
            text = ", ".join(f"{n}={next(iter(item[n].values()))}" for n in names)
            found.add((table, text))
    return found


async def test_a_single_table_layout_is_deleted_whole_and_plan_resolve_names_exactly_that(
    endpoint: str,
    media: AwsClients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rules_file = RULES_FILE
    rules: Rules = load_rules(rules_file)
    expired, live = _job("906", 1_700_000_000), _job("9061", 4_000_000_000)  # the sibling differs after '#'
    tampered = ("app", {"PK": _s("JOB#906"), "SK": _s("OUTPUT#xx"), "tenant": _s("TENANT#acme"),
                        "output_url": _s("s3://media/outputs/acme/9061/de.json")})  # fmt: skip
    await _fill(media, [*expired, *live])
    await media.dynamodb.put_item(TableName=tampered[0], Item=tampered[1])
    versions_before, items_before = await _versions(media), await _items(media)
    live_versions = {v for v in versions_before if "/9061/" in v[0]}
    transcript = await media.dynamodb.get_item(
        TableName="app", Key={"PK": _s("JOB#906"), "SK": _s("TRANSCRIPT")}
    )
    (tmp_path / "item.json").write_text(json.dumps({"Item": transcript["Item"]}))

    # The dry run first: read-only, it names every version and linked item, and the refusal.
    for name, value in (("AWS_ACCESS_KEY_ID", CREDENTIALS[0]), ("AWS_SECRET_ACCESS_KEY", CREDENTIALS[1])):
        monkeypatch.setenv(name, value)
    args = ["plan", "--config", str(rules_file), "--resolve", "--json", "--endpoint-url", endpoint]
    args += ["--region", REGION, str(tmp_path / "item.json")]
    assert await asyncio.to_thread(main, args) == EXIT_UNSAFE  # the tampered output's URL is refused
    (entry,) = json.loads(capsys.readouterr().out)
    assert await _versions(media) == versions_before  # nothing was touched
    assert [r["target"] for r in entry["refused"]] == ["s3://media/outputs/acme/9061/de.json"]
    would_versions = {(d["where"], d["what"]) for d in entry["would_delete"] if d["kind"] != "item"}
    would_items = {(d["where"], d["what"]) for d in entry["would_delete"] if d["kind"] == "item"}

    # Then the real run: the TTL service removes the transcript, the worker deletes the rest.
    registry = CollectorRegistry()
    settings = local_settings(endpoint, config=rules_file, idle_poll_seconds=0.05, retry_backoff_seconds=0.1)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with build_worker(settings, rules, registry, RetryPolicy(attempts=3), aws) as worker:
        task = asyncio.create_task(worker.run())
        ttl_delete("app", {"PK": _s("JOB#906"), "SK": _s("TRANSCRIPT")})
        labels = {"table": "app", "outcome": "deleted"}
        await eventually(
            lambda: (registry.get_sample_value("reconciler_record_outcomes_total", labels) or 0) >= 1,
            seconds=60,
        )
        worker.handle_exit()
        await asyncio.wait_for(task, timeout=30)

    gone_versions = versions_before - await _versions(media)
    gone_items = items_before - await _items(media) - {("app", "PK=JOB#906, SK=TRANSCRIPT")}
    assert gone_versions == would_versions
    assert gone_items == would_items
    assert ("app", "PK=JOB#906, SK=OUTPUT#xx") in gone_items  # the tampered child itself went ...
    assert live_versions <= await _versions(media)  # ... and the object it pointed at, a sibling's, stayed
    assert {k for k in await _items(media) if "9061" in k[1]} == {k for k in items_before if "9061" in k[1]}
    remaining = {v for v in await _versions(media) if "/906/" in v[0]}
    assert remaining == set(), remaining
    # Everything of job 906: audio, both outputs, two segments and the LLM request, two versions each.
    assert len(gone_versions) == 2 * 6
    assert {t for t, _ in gone_items} == {"app", "segments", "gateway"}
