"""A real Prometheus scrapes a real worker on moto: a lagging TTL service opens a ticket and pages nobody.
A shadow worker (``--dry-run``) beside it, scraped as a job of its own, feeds the dashboard's shadow row.

Items whose TTL expired two hours ago are deleted now, as a late TTL service would: their lag from expiry
exceeds an hour, but the worker finishes each within seconds of its REMOVE event, so the SLO (the worker's own
lag) holds and only the TTL service ticket fires. The rules are the shipped ones with every window and ``for``
scaled by 1/60 (1h becomes 1m, 5m becomes 5s) and a 1 s scrape and evaluation interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from promserver import log_tail, prometheus, promtool

from dashboards.overview import queries
from reconciler.adapters.aws import AwsSettings, RetryPolicy
from reconciler.app import build_worker
from reconciler.demo.layout import UPLOADS, Layout, Transcript, expiry
from reconciler.demo.moto_server import CREDENTIALS, REGION, BackendSeeder, ttl_delete
from reconciler.demo.run import local_settings
from reconciler.observability.slo import JOB, rule_groups
from reconciler.rules import Rules
from reconciler.testing import eventually
from reconciler.worker import Worker

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

SCALE = 1 / 60
LATE = 2 * 3600  # the TTL expired two hours before the TTL service deleted the item
DASHBOARD = Path(__file__).parent.parent / "dashboards" / "reconciler-overview.json"
TTL_TICKET = "ReconcilerTtlServiceLagHigh"
PAGES = ("ReconcilerDeletionLagBudgetBurnFast", "ReconcilerDeletionLagBudgetBurnSlow")
SHADOW_JOB = "reconciler-shadow"
# Panels whose counters start at zero: the held upload and the tampered link must move them.
DRIVEN = ("Failures", "Unsafe targets", "Dead letters", "outcomes", "Artifacts")
# No sweeper runs here: its histogram is exported at zero, so its quantile is a series without a value (NaN).
UNDRIVEN = ("reconciler_enforcement_lag_seconds_bucket",)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextlib.asynccontextmanager
async def _worker(
    endpoint: str, rules: Rules, registry: CollectorRegistry, *, dry_run: bool = False
) -> AsyncIterator[Worker]:
    # The orphan sweep too (it finds nothing old enough to delete), and the expiry sweeper with a grace
    # longer than any TTL here (it enforces nothing: the TTL service plays its part): their panels have data.
    settings = local_settings(
        endpoint,
        idle_poll_seconds=0.05,
        max_idle_poll_seconds=0.2,
        dry_run=dry_run,
        orphan_sweep=True,
        enforce_expiry=True,
        expiry_grace_seconds=3 * 86400.0,
    )
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with build_worker(settings, rules, registry, RetryPolicy(attempts=3), aws) as worker:
        task = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: worker.http is not None and bool(worker.http.port), seconds=30)
            yield worker
        finally:
            worker.handle_exit()
            await asyncio.wait_for(task, timeout=30)


async def _late_deletions(layout: Layout, seeder: BackendSeeder) -> None:
    """One transcript a second whose TTL expired two hours ago, deleted now by the 'TTL service'."""
    for n in itertools.count():
        late = Transcript(f"acct-{n % 3}", f"late-{n:04d}", expiry(_now(), -LATE))
        await layout.add([late], seed=seeder)
        ttl_delete("transcripts", {"transcript_id": {"S": late.transcript_id}})
        await asyncio.sleep(1.0)


async def _get(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with session.get(url, params=params) as response:
        response.raise_for_status()
        return await response.json()


async def _firing(session: aiohttp.ClientSession, base: str, name: str) -> list[dict[str, Any]]:
    alerts = (await _get(session, f"{base}/api/v1/alerts"))["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


async def _wait_scraped(session: aiohttp.ClientSession, base: str, metric: str) -> None:
    async with asyncio.timeout(60):
        while not (await _get(session, f"{base}/api/v1/query", query=metric))["data"]["result"]:  # noqa: ASYNC110 - polling an HTTP API
            await asyncio.sleep(0.2)


async def _wait_firing(
    session: aiohttp.ClientSession, base: str, name: str, directory: Path
) -> dict[str, Any]:
    try:
        async with asyncio.timeout(120):
            while not (found := await _firing(session, base, name)):  # noqa: ASYNC110 - polling an HTTP API
                await asyncio.sleep(0.5)
    except TimeoutError:
        rules = await _get(session, f"{base}/api/v1/rules")
        message = f"{name} never fired.\nrules: {rules}\nprometheus log: {log_tail(directory)}"
        raise AssertionError(message) from None
    return found[0]


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for title, expr in queries(dashboard):
        job = SHADOW_JOB if title.startswith("Shadow:") else JOB  # the shadow row shows the dry run's job
        substitutions = {"$__rate_interval": "5m", "$job": job}  # the test's history fits in 5 minutes
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)  # noqa: PLW2901 - the panel's query, made concrete
        found.append((title, expr))
    return found


def _has_data(title: str, expr: str, result: list[dict[str, Any]]) -> bool:
    """A finite value; above zero for the panels this scenario drives (counters there start at zero); a series
    at all for what it does not drive."""
    values = [float(series["value"][1]) for series in result]
    if any(word in title for word in DRIVEN):
        return any(v > 0 for v in values)
    if any(name in expr for name in UNDRIVEN):
        return bool(values)
    return any(math.isfinite(v) for v in values)


async def _empty_panels(
    session: aiohttp.ClientSession, base: str, panel_queries: list[tuple[str, str]]
) -> list[str]:
    """Panels whose query has no data yet, asked again for up to 30 s: a counter born mid-run (a failure
    series appears with its first failure) needs a second scrape before rate() sees it."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        empty = []
        for title, expr in panel_queries:
            result = (await _get(session, f"{base}/api/v1/query", query=expr))["data"]["result"]
            if not _has_data(title, expr, result):
                empty.append(f"{title}: {expr}")
        if not empty or asyncio.get_running_loop().time() > deadline:
            return empty
        await asyncio.sleep(1.0)


async def test_a_lagging_ttl_service_opens_the_ttl_alert_ticket_never_an_slo_page_and_every_panel_has_data(
    endpoint: str, layout: Layout, rules: Rules, tmp_path: Path
) -> None:
    # One upload under legal hold (a refusal, dead-lettered) and one tampered link (an unsafe target), so
    # the failure and refusal panels have real data too.
    await layout.s3.put_object_lock_configuration(
        Bucket=UPLOADS, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
    )
    held = Transcript("acct-9", "on-hold", expiry(_now(), -LATE))
    tampered = Transcript(
        "acct-1", "tampered", expiry(_now(), -LATE), audio_url=f"s3://{UPLOADS}/acct-2/x.wav"
    )
    seeder = BackendSeeder()
    await layout.add([held, tampered], seed=seeder)
    await layout.s3.put_object_legal_hold(
        Bucket=UPLOADS, Key="acct-9/on-hold/audio.wav", LegalHold={"Status": "ON"}
    )
    registry = CollectorRegistry()

    async with (
        _worker(endpoint, rules, registry) as worker,
        _worker(endpoint, rules, CollectorRegistry(), dry_run=True) as shadow,
    ):
        assert worker.http is not None
        assert shadow.http is not None
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{http.port}"]}]}
                for job, http in ((JOB, worker.http), (SHADOW_JOB, shadow.http))
            ],
        }
        async with prometheus(tmp_path, config, {"groups": rule_groups(scale=SCALE)}) as base:
            async with aiohttp.ClientSession() as session:
                # A counter's first increase is seen only after a sample at zero: a dead letter is written
                # once, however often its record is redelivered, so wait for the first scrape.
                await _wait_scraped(session, base, "reconciler_dead_letters_total")
            for t in (held, tampered):
                ttl_delete("transcripts", {"transcript_id": {"S": t.transcript_id}})
            feeder = asyncio.create_task(_late_deletions(layout, seeder))
            try:
                async with aiohttp.ClientSession() as session:
                    alert = await _wait_firing(session, base, TTL_TICKET, tmp_path)
                    assert alert["labels"]["severity"] == "ticket"
                    description = alert["annotations"]["description"]
                    assert "100%" in description, description  # every item left its table late
                    assert "<no value>" not in description
                    assert alert["annotations"]["runbook_url"].endswith("#reconcilerttlservicelaghigh")
                    # the worker finished each deletion within seconds of its event: no page for DynamoDB
                    for page in (*PAGES, "ReconcilerTargetDown"):
                        assert not await _firing(session, base, page), page

                    panel_queries = _panel_queries()
                    assert len(panel_queries) > 15  # the dashboard's queries were found at all
                    empty = await _empty_panels(session, base, panel_queries)
                    assert not empty, "panel queries without data:\n" + "\n".join(empty)

                    async with session.get(f"http://127.0.0.1:{worker.http.port}/metrics") as response:
                        exposition = await response.text()
            finally:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder

    checked = promtool("check", "metrics", stdin=exposition)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "reconciler_last_successful_poll_age_seconds{" in exposition
    assert "reconciler_build_info{" in exposition
