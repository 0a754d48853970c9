"""Shadow mode on moto's HTTP server: every operation the shadow worker's clients send is recorded, and the
only writes go to its own lease table; the artifacts are all still there, a real worker's checkpoint is
untouched, and what the shadow counted is what a real run then deletes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import structlog.testing
from aiobotocore.session import AioSession, get_session
from conftest import DEMO_RULES, worker_env
from moto.dynamodb.models import dynamodb_backends
from prometheus_client import CollectorRegistry

import reconciler.adapters.aws
from reconciler.adapters.aws import AwsSettings, RetryPolicy
from reconciler.app import build_worker
from reconciler.demo.layout import TRANSCRIPTS, UPLOADS, Layout, Transcript, expiry
from reconciler.demo.moto_server import ACCOUNT_ID, CREDENTIALS, REGION, BackendSeeder, ttl_delete
from reconciler.demo.run import local_settings
from reconciler.observability.metrics import SHADOW_TARGET_KINDS
from reconciler.rules import Rules
from reconciler.testing import eventually
from reconciler.worker import SHADOW, Worker

pytestmark = pytest.mark.integration

REAL_TABLES = ("reconciler-checkpoints", "reconciler-dead-letters", "reconciler-receipts")
SHADOW_TABLE = "reconciler-shadow-checkpoints"
READS = ("Get", "List", "Describe", "Query", "Scan", "BatchGet", "Head")


@dataclass(frozen=True, slots=True)
class Call:
    """One AWS operation a client sent: its service, its name and the tables, buckets or streams it names."""

    service: str
    operation: str
    resources: frozenset[str]

    @property
    def writes(self) -> bool:
        return not self.operation.startswith(READS)


def _recording(calls: list[Call]) -> Callable[[], AioSession]:
    """``get_session`` for the worker's clients, with a hook that records every operation before it is
    built; a client's emitter is copied from its session's, so every client it creates records."""

    def record(params: dict[str, Any], model: Any, event_name: str, **_: Any) -> None:
        names = {str(params[p]) for p in ("TableName", "Bucket", "StreamArn") if p in params}
        names |= set(params.get("RequestItems", {}))
        calls.append(Call(event_name.split(".")[1], str(model.name), frozenset(names)))

    def session() -> AioSession:
        created = get_session()
        created.register("before-parameter-build", record)
        return created

    return session


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a loopback URL of ours
        return int(response.status), response.read().decode()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _outcomes(registry: CollectorRegistry, *outcomes: str) -> float:
    return sum(
        _count(registry, "reconciler_record_outcomes_total", table="transcripts", outcome=o) for o in outcomes
    )


@contextlib.asynccontextmanager
async def _running(
    endpoint: str, rules: Rules, registry: CollectorRegistry, *, dry_run: bool, **overrides: object
) -> AsyncIterator[Worker]:
    fast = {"idle_poll_seconds": 0.05, "max_idle_poll_seconds": 0.2, "retry_backoff_seconds": 0.1}
    settings = local_settings(endpoint, dry_run=dry_run, **fast, **overrides)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with build_worker(settings, rules, registry, RetryPolicy(attempts=3), aws) as worker:
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.handle_exit()
            await asyncio.wait_for(task, timeout=30)


async def _rows(layout: Layout, table: str) -> list[str]:
    found = await layout.dynamodb.scan(TableName=table, ConsistentRead=True)
    return sorted(json.dumps(item, sort_keys=True) for item in found["Items"])


async def _checkpoints(layout: Layout, table: str) -> list[str]:
    found = await layout.dynamodb.scan(TableName=table, ConsistentRead=True)
    return [i["checkpoint"]["S"] for i in found["Items"] if not i["stream_arn"]["S"].startswith("#")]


def _last_sequence_number() -> str:
    shard = dynamodb_backends[ACCOUNT_ID][REGION].get_table("transcripts").stream_shard
    assert shard is not None
    return str(shard.items[-1].record["dynamodb"]["SequenceNumber"])


async def test_a_shadow_run_writes_only_its_own_checkpoints_and_counts_what_a_real_run_then_deletes(
    endpoint: str, layout: Layout, rules: Rules, monkeypatch: pytest.MonkeyPatch
) -> None:
    expired = [Transcript("acct-1", f"tr-{n}", expiry(_now(), -600)) for n in range(3)]
    tampered = Transcript("acct-1", "tampered", expiry(_now(), -60), audio_url=f"s3://{UPLOADS}/acct-2/x.wav")
    live = Transcript("acct-2", "live", expiry(_now(), 86400))
    overdue = Transcript("acct-2", "overdue", expiry(_now(), -7200))  # a sweeper would delete it now
    everything = [*expired, tampered, live, overdue]
    await layout.add(everything, seed=BackendSeeder())
    await layout.s3.delete_object(Bucket=TRANSCRIPTS, Key="acct-1/tr-0/captions.vtt")  # a delete marker

    # A real worker reads the inserts and checkpoints them.
    first = CollectorRegistry()
    async with _running(endpoint, rules, first, dry_run=False):
        await eventually(lambda: _outcomes(first, "ignored") >= len(everything), seconds=60)
    real_rows = await _rows(layout, "reconciler-checkpoints")
    assert await _checkpoints(layout, "reconciler-checkpoints") == [_last_sequence_number()]

    for t in [*expired, tampered]:
        ttl_delete("transcripts", {"transcript_id": {"S": t.transcript_id}})
    before = await layout.snapshot(everything)

    # The shadow reads the whole stream under its own leases, every operation recorded; expiry enforcement
    # asked for, with no grace, and not run.
    calls: list[Call] = []
    shadow = CollectorRegistry()
    enforce = {"enforce_expiry": True, "expiry_grace_seconds": 0}
    with monkeypatch.context() as patched, structlog.testing.capture_logs() as logs:
        patched.setattr(reconciler.adapters.aws, "get_session", _recording(calls))
        async with _running(endpoint, rules, shadow, dry_run=True, **enforce) as worker:
            await eventually(lambda: _outcomes(shadow, "deleted", "dead_lettered") >= 4, seconds=60)
            assert worker.readiness()[1].startswith(SHADOW)

    assert _outcomes(shadow, "ignored") == len(everything)  # it read the stream from its beginning
    assert not [e for e in logs if e["event"].startswith("sweep.")]  # the sweeper's task never started

    assert await layout.snapshot(everything) == before  # every version, marker and item is still there
    assert await _rows(layout, "reconciler-checkpoints") == real_rows
    assert await _checkpoints(layout, SHADOW_TABLE) == [_last_sequence_number()]
    assert not [c for c in calls if c.resources & set(REAL_TABLES)]  # not even read
    writes = [c for c in calls if c.writes]
    assert {c.operation for c in writes} >= {"CreateTable", "PutItem", "UpdateItem"}
    assert {(c.service, *c.resources) for c in writes} == {("dynamodb", SHADOW_TABLE)}
    assert {c.operation for c in calls if c.service == "s3"} == {"ListObjectVersions"}
    assert (await layout.dynamodb.scan(TableName="reconciler-dead-letters"))["Count"] == 0

    # A real worker resumes from its own checkpoint and deletes what the shadow counted.
    second = CollectorRegistry()
    async with _running(endpoint, rules, second, dry_run=False):
        await eventually(lambda: _outcomes(second, "deleted", "dead_lettered") >= 4, seconds=60)

    assert (
        _count(second, "reconciler_stream_records_total", table="transcripts", event="INSERT", cause="none")
        == 0
    )
    for t in [*expired, tampered]:
        assert await layout.remaining(t) == 0, t
    for kind in SHADOW_TARGET_KINDS:
        would = _count(shadow, "reconciler_shadow_targets_total", table="transcripts", cause="ttl", kind=kind)
        assert would == _count(second, "reconciler_artifacts_total", kind=kind, outcome="deleted") > 0, kind
    shadow_records = _count(shadow, "reconciler_shadow_records_total", table="transcripts", cause="ttl")
    assert shadow_records == _outcomes(second, "deleted") == 4
    refused = {"table": "transcripts", "reason": "out_of_scope"}
    assert _count(shadow, "reconciler_shadow_refusals_total", **refused) == 1
    assert _count(second, "reconciler_unsafe_targets_total", **refused) == 1
    letters = _count(shadow, "reconciler_shadow_dead_letters_total", table="transcripts", kind="unsafe")
    assert letters == _count(second, "reconciler_dead_letters_total", kind="unsafe") == 1


async def test_reconciler_run_dry_run_creates_only_its_lease_table_and_says_shadow_mode(
    endpoint: str, layout: Layout
) -> None:
    """The console script with --dry-run: one loud warning at start, /readyz names the mode, and
    --create-tables creates the shadow lease table and nothing else."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", "run", "--config", str(DEMO_RULES), "--dry-run",
        env=worker_env(endpoint), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(60):
            while not any(e["event"] == "shard.started" for e in events):
                events.append(json.loads(await process.stderr.readline()))
        port = int(next(e["http_port"] for e in events if e["event"] == "worker.started"))
        ready = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(process.stderr.read(), timeout=60)).decode().splitlines()
    assert await process.wait() == 0
    assert ready == (200, f"{SHADOW}consuming 1 shards\n")
    logged = [*events, *(json.loads(line) for line in rest)]
    (warning,) = [e for e in logged if e["event"] == "worker.shadow_mode"]
    assert (warning["level"], warning["lease_table"]) == ("warning", SHADOW_TABLE)
    tables = (await layout.dynamodb.list_tables())["TableNames"]
    assert SHADOW_TABLE in tables
    assert not set(REAL_TABLES) & set(tables)
