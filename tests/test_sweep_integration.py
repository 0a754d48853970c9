"""The sweeper on moto, wired as the worker and ``reconciler sweep`` wire it: transcripts that expired days
ago lose every artifact within one pass; live ones and those inside the grace keep everything."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from conftest import DEMO_RULES, worker_env
from prometheus_client import CollectorRegistry

from reconciler.adapters.aws import AwsSettings, RetryPolicy
from reconciler.adapters.tables import create_worker_tables
from reconciler.app import build_sweeper, build_worker
from reconciler.cli import main
from reconciler.demo.layout import Layout, Transcript, expiry
from reconciler.demo.moto_server import CREDENTIALS, REGION, BackendSeeder
from reconciler.demo.run import local_settings
from reconciler.rules import Rules
from reconciler.sweeper import Pass
from reconciler.testing import eventually

pytestmark = pytest.mark.integration
DAY = 86400


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def test_sweep_enforces_items_expired_days_ago_with_every_artifact_in_one_pass(
    endpoint: str, layout: Layout, rules: Rules
) -> None:
    expired = [Transcript("acct-1", f"old-{n}", expiry(_now(), -3 * DAY - n)) for n in range(4)]
    keep = [
        Transcript("acct-1", "live", expiry(_now(), DAY)),
        Transcript("acct-1", "in-grace", expiry(_now(), -60)),
    ]
    await layout.add([*expired, *keep], seed=BackendSeeder())
    before = await layout.snapshot(keep)
    registry = CollectorRegistry()
    settings = local_settings(endpoint, enforce_expiry=True, sweep_segments=3)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with build_sweeper(settings, rules, registry, aws) as sweeper:
        await create_worker_tables(
            layout.dynamodb,
            settings.checkpoint_table,
            settings.dead_letter_table,
            receipts=settings.receipt_table,
        )
        report = await sweeper.sweep(asyncio.Event(), Pass(force=True))
    assert (report.candidates, report.enforced, report.segments) == (4, 4, 3)
    for t in expired:
        assert await layout.remaining(t) == 0, t
        item = await layout.dynamodb.get_item(
            TableName="transcripts", Key={"transcript_id": {"S": t.transcript_id}}
        )
        assert "Item" not in item
    assert await layout.snapshot(keep) == before
    assert registry.get_sample_value("reconciler_sweep_read_units_total", {"table": "transcripts"})


async def test_the_worker_sweeps_as_one_of_its_tasks_and_stops_with_it(
    endpoint: str, layout: Layout, rules: Rules
) -> None:
    old = Transcript("acct-2", "old", expiry(_now(), -2 * DAY))
    await layout.add([old], seed=BackendSeeder())
    registry = CollectorRegistry()
    settings = local_settings(endpoint, enforce_expiry=True, sweep_segments=2, idle_poll_seconds=0.05)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with build_worker(settings, rules, registry, RetryPolicy(attempts=3), aws) as worker:
        task = asyncio.create_task(worker.run())
        try:
            await eventually(
                lambda: (
                    (
                        registry.get_sample_value("reconciler_sweep_passes_total", {"table": "transcripts"})
                        or 0
                    )
                    >= 2
                ),
                seconds=60,
            )
        finally:
            worker.handle_exit()
            await asyncio.wait_for(task, timeout=30)
    assert await layout.remaining(old) == 0
    assert (
        registry.get_sample_value("reconciler_enforcement_lag_seconds_count", {"table": "transcripts"}) == 1
    )


async def test_sweep_once_cli_dry_run_lists_and_deletes_nothing_then_a_pass_enforces(
    endpoint: str, layout: Layout, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = Transcript("acct-3", "old", expiry(_now(), -2 * DAY))
    recent = Transcript("acct-3", "recent", expiry(_now(), -60))  # inside the grace: only with --expired
    await layout.add([old, recent], seed=BackendSeeder())
    await create_worker_tables(
        layout.dynamodb, "reconciler-checkpoints", "reconciler-dead-letters", receipts="reconciler-receipts"
    )
    for name, value in worker_env(endpoint).items():
        monkeypatch.setenv(name, value)
    args = ["sweep", "--once", "--config", str(DEMO_RULES), "--sweep-segments", "2", "--log-level", "ERROR"]
    assert await asyncio.to_thread(main, [*args, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert '{"transcript_id": "old"}' in listed
    assert "recent" not in listed
    assert await layout.remaining(old) > 0
    assert await asyncio.to_thread(main, args) == 0
    assert "enforced: 1," in capsys.readouterr().out
    assert await layout.remaining(old) == 0
    assert await layout.remaining(recent) > 0
    assert await asyncio.to_thread(main, [*args, "--expired"]) == 0
    assert await layout.remaining(recent) == 0
