"""Age rules on moto: accounts from a table and from a file, versions and delete markers, sibling accounts
whose ids begin alike, and a dry run (through the CLI) that deletes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import DEMO_RULES, until_scheduled_run, worker_env
from moto.s3.models import s3_backends
from prometheus_client import CollectorRegistry

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.probes import AwsResourceProbe
from reconciler.adapters.tables import create_table
from reconciler.app import build_age_sweep
from reconciler.cli import main
from reconciler.demo.layout import Layout
from reconciler.demo.moto_server import ACCOUNT_ID, CREDENTIALS, REGION, reset
from reconciler.demo.run import local_settings
from reconciler.preflight import Problem
from reconciler.rules import load_rules

pytestmark = pytest.mark.integration
BUCKET = "stt-llm-gateway"
AGE_RULES = """
[[age_rules]]
name = "llm-hourly"
scope = "s3://stt-llm-gateway/requests/{account_id}/"
max_age = "1h"
accounts_table.table = "accounts"
accounts_table.attribute = "account_id"
accounts_table.filter_attribute = "llm_ttl"
accounts_table.filter_value = "1h"

[[age_rules]]
name = "exports"
scope = "s3://stt-llm-gateway/exports/{account_id}/"
max_age = 3600
accounts_file = "exports.txt"
"""
# (key, versions, plain deletes after them, old?) ; accounts 907 and 90 are listed for requests/, 9070 is not;
# 9070 alone is listed for exports/.
OBJECTS = [
    ("requests/907/r1/input.json", 2, 1, True),  # two versions and a delete marker: all go
    ("requests/907/r2/output.json", 1, 0, False),  # young
    ("requests/90/r1/input.json", 1, 0, True),
    ("requests/9070/r1/input.json", 1, 0, True),  # unlisted sibling
    ("requests/9/r1/input.json", 1, 0, True),  # listed with another retention
    ("exports/9070/e1.csv", 1, 0, True),
    ("exports/907/e1.csv", 1, 0, True),  # not in the file
    ("models/907/m.bin", 1, 0, True),  # outside every scope
]
GONE = {"requests/907/r1/input.json", "requests/90/r1/input.json", "exports/9070/e1.csv"}


def demo_without_age_rules() -> str:
    """The demo rules' text without their own age rules, for a test's to follow."""
    return DEMO_RULES.read_text().split("[[age_rules]]", 1)[0]


@pytest.fixture
async def s3_world(endpoint: str, tmp_path: Path) -> AsyncIterator[tuple[AwsClients, Path]]:
    reset(endpoint)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        await clients.s3.create_bucket(Bucket=BUCKET)
        await clients.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        await create_table(clients.dynamodb, "accounts", ("tenant",), poll_seconds=0.05)
        rows = [("acme", {"S": "907"}, "1h"), ("beta", {"N": "90"}, "1h"), ("gamma", {"S": "9"}, "30d")]
        for tenant, account, ttl in rows:
            item = {"tenant": {"S": tenant}, "account_id": account, "llm_ttl": {"S": ttl}}
            await clients.dynamodb.put_item(TableName="accounts", Item=item)
        for key, versions, deletes, _ in OBJECTS:
            for n in range(versions):
                await clients.s3.put_object(Bucket=BUCKET, Key=key, Body=f"v{n}".encode())
            for _ in range(deletes):
                await clients.s3.delete_object(Bucket=BUCKET, Key=key)
        _backdate({key for key, *_, old in OBJECTS if old}, dt.timedelta(hours=2))
        (tmp_path / "exports.txt").write_text("# hourly exports\n9070\n")
        (tmp_path / "rules.toml").write_text(demo_without_age_rules() + AGE_RULES)
        yield clients, tmp_path / "rules.toml"


def _backdate(keys: set[str], by: dt.timedelta) -> None:
    """moto stamps every version with the time of the request: move these keys' versions back."""
    store = s3_backends[ACCOUNT_ID]["aws"].buckets[BUCKET].keys
    for key in keys:
        for version in store.getlist(key):
            version.last_modified -= by


async def _versions(clients: AwsClients) -> set[tuple[str, str]]:
    listed = await clients.s3.list_object_versions(Bucket=BUCKET)
    entries = [*listed.get("Versions", []), *listed.get("DeleteMarkers", [])]
    return {(e["Key"], e["VersionId"]) for e in entries}


async def test_age_rules_delete_exactly_the_objects_past_their_age_only_for_the_listed_accounts(
    endpoint: str,
    s3_world: tuple[AwsClients, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clients, rules_file = s3_world
    before = await _versions(clients)
    for name, value in worker_env(endpoint).items():
        monkeypatch.setenv(name, value)
    args = ["sweep", "--once", "--age", "--dry-run", "--config", str(rules_file), "--log-level", "ERROR"]
    assert await asyncio.to_thread(main, args) == 0
    listed = capsys.readouterr().out.splitlines()
    assert await _versions(clients) == before
    assert sorted(line.split()[2] for line in listed[:-1]) == sorted(f"s3://{BUCKET}/{k}" for k in GONE)
    assert "(3 versions) age 2:00:" in "\n".join(listed)
    assert "past their age: 3 (dry run: nothing deleted)" in listed[-1]

    registry = CollectorRegistry()
    settings = local_settings(endpoint, config=rules_file)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with build_age_sweep(settings, load_rules(rules_file), registry, aws) as sweep:
        report = await sweep.sweep(dry_run=False)

    assert await _versions(clients) == {(key, version) for key, version in before if key not in GONE}
    assert (report.deleted, report.versions_deleted, report.kept) == (3, 3 + 1 + 1, 0)
    assert registry.get_sample_value("reconciler_age_deletions_total", {"rule": "llm-hourly"}) == 2
    assert registry.get_sample_value("reconciler_age_versions_deleted_total", {"rule": "exports"}) == 1


async def test_the_preflight_checks_an_age_rules_accounts_table_and_prefix(
    s3_world: tuple[AwsClients, Path],
) -> None:
    clients, _ = s3_world
    probe = AwsResourceProbe(clients.dynamodb, clients.streams, clients.s3, Caller(RetryPolicy()))
    assert await probe.accounts_table("accounts") == []
    assert await probe.accounts_table("no-accounts") == [
        Problem("accounts table 'no-accounts'", "does not exist")
    ]
    assert await probe.bucket(BUCKET, ("requests/",)) == []


async def test_the_worker_runs_the_age_rules_on_their_schedule_one_replica_at_a_time(
    endpoint: str, layout: Layout, tmp_path: Path
) -> None:
    """No CLI call: the worker's scheduled ``age`` job deletes the listed account's old object and keeps
    an unlisted sibling's and a young one."""
    (tmp_path / "exports.txt").write_text("9070\n")
    rules_file = tmp_path / "rules.toml"
    exports = "[[age_rules]]" + AGE_RULES.split("[[age_rules]]")[2]  # the file-listed rule alone
    rules_file.write_text(demo_without_age_rules() + exports)
    keys = {"exports/9070/e1.csv": True, "exports/907/e1.csv": True, "exports/9070/e2.csv": False}
    for key in keys:
        await layout.s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    _backdate({key for key, old in keys.items() if old}, dt.timedelta(hours=2))
    settings = local_settings(endpoint, config=rules_file, age_sweep=True)
    registry = await until_scheduled_run(endpoint, settings, load_rules(rules_file), "age")
    listed = await layout.s3.list_object_versions(Bucket=BUCKET, Prefix="exports/")
    assert {v["Key"] for v in listed.get("Versions", [])} == {"exports/907/e1.csv", "exports/9070/e2.csv"}
    assert registry.get_sample_value("reconciler_age_deletions_total", {"rule": "exports"}) == 1
