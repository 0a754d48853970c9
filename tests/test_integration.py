"""The real pipeline against moto's HTTP server on a loopback port, through real aiobotocore clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import DEMO_RULES, worker_env
from moto.dynamodb.models import dynamodb_backends
from prometheus_client import CollectorRegistry

from reconciler.adapters.aws import AwsSettings, Caller, RetryPolicy
from reconciler.adapters.dynamodb import DynamoDBItemStore
from reconciler.adapters.s3 import S3ArtifactStore
from reconciler.app import build_worker
from reconciler.core.plan import DeletionPlan
from reconciler.core.scope import S3Location
from reconciler.demo.layout import UPLOADS, Layout, Transcript, expiry
from reconciler.demo.moto_server import (
    ACCOUNT_ID,
    CREDENTIALS,
    REGION,
    BackendSeeder,
    ttl_delete,
)
from reconciler.demo.run import local_settings, run_demo, touched
from reconciler.execution import Executor
from reconciler.observability.metrics import Metrics
from reconciler.rules import Rules, load_rules
from reconciler.settings import Settings
from reconciler.testing import eventually
from reconciler.worker import Worker

pytestmark = pytest.mark.integration


def _settings(endpoint: str) -> Settings:
    return local_settings(
        endpoint, idle_poll_seconds=0.05, max_idle_poll_seconds=0.2, retry_backoff_seconds=0.1
    )


@contextlib.asynccontextmanager
async def running(
    endpoint: str,
    rules: Rules,
    registry: CollectorRegistry,
    *,
    credentials: tuple[str, str] | None = CREDENTIALS,
) -> AsyncIterator[Worker]:
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=credentials)
    async with build_worker(_settings(endpoint), rules, registry, RetryPolicy(attempts=3), aws) as worker:
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.handle_exit()
            await asyncio.wait_for(task, timeout=30)


def _count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _finished(registry: CollectorRegistry) -> Callable[[], float]:
    return lambda: sum(
        _count(registry, "reconciler_record_outcomes_total", table="transcripts", outcome=o)
        for o in ("deleted", "dead_lettered")
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def test_ttl_expiry_of_fifty_items_deletes_every_linked_artifact_and_version(
    endpoint: str, layout: Layout, rules: Rules
) -> None:
    expired = [Transcript(f"acct-{n % 3}", f"tr-{n:03d}", expiry(_now(), -600 - n)) for n in range(52)]
    live = [Transcript(f"acct-{n % 3}", f"live-{n:03d}", expiry(_now(), 86400)) for n in range(4)]
    await layout.add([*expired, *live], seed=BackendSeeder())
    live_before = await layout.snapshot(live)
    assert all(len(v) > 0 for v in live_before.values())
    registry = CollectorRegistry()

    async with running(endpoint, rules, registry):
        for t in expired:
            ttl_delete("transcripts", {"transcript_id": {"S": t.transcript_id}})
        await eventually(lambda: _finished(registry)() >= len(expired), seconds=90)

    assert (
        _count(registry, "reconciler_stream_records_total", table="transcripts", event="REMOVE", cause="ttl")
        == 52
    )
    for t in expired:
        assert await layout.remaining(t) == 0, t
    assert await layout.snapshot(live) == live_before
    # 2 versions of the audio and of 4 transcript files, 3 outputs, 2x2 LLM objects per transcript.
    assert _count(registry, "reconciler_artifacts_total", kind="object_version", outcome="deleted") == 52 * 17
    assert _count(registry, "reconciler_artifacts_total", kind="item", outcome="deleted") == 52 * 5
    assert _count(registry, "reconciler_deletion_lag_seconds_count", cause="ttl") == 52


async def test_a_customer_deletion_cascades_at_the_time_of_the_request(
    endpoint: str, layout: Layout, rules: Rules
) -> None:
    customer = Transcript("acct-1", "tr-customer", expiry(_now(), 30 * 86400))
    await layout.add([customer])  # through the API this time
    registry = CollectorRegistry()

    async with running(endpoint, rules, registry):
        await layout.dynamodb.delete_item(
            TableName="transcripts", Key={"transcript_id": {"S": "tr-customer"}}
        )
        await eventually(lambda: _finished(registry)() >= 1, seconds=60)

    assert (
        _count(
            registry,
            "reconciler_stream_records_total",
            table="transcripts",
            event="REMOVE",
            cause="requested",
        )
        == 1
    )
    assert await layout.remaining(customer) == 0


CREDENTIAL_PROCESS = """#!/bin/sh
# A credential_process whose token service is down while the flag file exists.
if [ -e "{flag}" ]; then echo "token service unavailable" >&2; exit 1; fi
printf '{{"Version": 1, "AccessKeyId": "testing", "SecretAccessKey": "testing", "Expiration": "%s"}}\\n' \\
    "$(date -u -d '+2 minutes' +%Y-%m-%dT%H:%M:%SZ)"
"""


def _credential_failures(registry: CollectorRegistry) -> float:
    return sum(
        _count(registry, "reconciler_failures_total", stage=stage, error="CredentialsError")
        for stage in ("poll", "delete", "discover")
    )


async def test_a_credential_source_that_fails_mid_run_makes_records_wait_and_then_recover(
    endpoint: str, layout: Layout, rules: Rules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials that expire within minutes are fetched again for every call; while the process fails,
    calls raise CredentialRetrievalError: the worker keeps running, records wait, nothing is skipped."""
    flag = tmp_path / "outage"
    script = tmp_path / "credentials.sh"
    script.write_text(CREDENTIAL_PROCESS.format(flag=flag))
    script.chmod(0o755)
    (tmp_path / "config").write_text(f"[default]\ncredential_process = {script}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    first, second = (Transcript("acct-1", f"tr-{n}", expiry(_now(), -600)) for n in (1, 2))
    await layout.add([first, second], seed=BackendSeeder())
    registry = CollectorRegistry()

    async with running(endpoint, rules, registry, credentials=None) as worker:
        ttl_delete("transcripts", {"transcript_id": {"S": first.transcript_id}})
        await eventually(lambda: _finished(registry)() >= 1, seconds=60)
        flag.touch()  # the outage starts
        ttl_delete("transcripts", {"transcript_id": {"S": second.transcript_id}})
        await eventually(lambda: _credential_failures(registry) >= 3, seconds=60)
        assert await layout.remaining(second) > 0
        assert worker.liveness()[0]
        flag.unlink()  # and ends
        await eventually(lambda: _finished(registry)() >= 2, seconds=60)

    assert await layout.remaining(first) == 0
    assert await layout.remaining(second) == 0


async def test_unsafe_uris_and_traversal_identifiers_delete_nothing_outside_scope(
    endpoint: str, layout: Layout, rules: Rules
) -> None:
    victim = Transcript("acct-2", "victim", expiry(_now(), 86400))
    tampered = Transcript(
        "acct-1", "tampered", expiry(_now(), -60), audio_url=f"s3://{UPLOADS}/acct-2/victim/audio.wav"
    )
    traversal = Transcript("acct-2", "../victim", expiry(_now(), -60))
    await layout.add([victim, tampered, traversal], seed=BackendSeeder())
    # Objects at the literal keys a naive renderer would produce for the traversal item must survive too.
    await layout.s3.put_object(Bucket="stt-transcripts", Key="acct-2/../victim/x.json", Body=b"{}")
    victim_before = await layout.snapshot([victim])
    literal_before = await layout.versions("stt-transcripts", "acct-2/../")
    registry = CollectorRegistry()

    async with running(endpoint, rules, registry):
        ttl_delete("transcripts", {"transcript_id": {"S": "tampered"}})
        ttl_delete("transcripts", {"transcript_id": {"S": "../victim"}})
        await eventually(lambda: _finished(registry)() >= 2, seconds=60)

    assert await layout.snapshot([victim]) == victim_before
    assert await layout.versions("stt-transcripts", "acct-2/../") == literal_before
    assert await layout.remaining(tampered) == 0  # its own in-scope artifacts still went
    unsafe = "reconciler_unsafe_targets_total"
    assert _count(registry, unsafe, table="transcripts", reason="out_of_scope") == 1
    assert _count(registry, unsafe, table="transcripts", reason="unsafe_identifier") == 1
    letters = await layout.dynamodb.scan(TableName="reconciler-dead-letters")
    assert sorted(i["kind"]["S"] for i in letters["Items"]) == ["unsafe", "unsafe"]
    assert all("OldImage" not in str(i) and "audio_url" not in str(i) for i in letters["Items"])


async def test_a_restarted_worker_resumes_from_its_checkpoint_without_missing_a_record(
    endpoint: str, layout: Layout, rules: Rules
) -> None:
    first_batch = [Transcript("acct-1", f"first-{n}", expiry(_now(), -60)) for n in range(5)]
    second_batch = [Transcript("acct-1", f"second-{n}", expiry(_now(), -60)) for n in range(5)]
    await layout.add([*first_batch, *second_batch], seed=BackendSeeder())
    before = CollectorRegistry()
    async with running(endpoint, rules, before):
        for t in first_batch:
            ttl_delete("transcripts", {"transcript_id": {"S": t.transcript_id}})
        await eventually(lambda: _finished(before)() >= len(first_batch), seconds=60)

    for t in second_batch:  # deleted while no worker runs
        ttl_delete("transcripts", {"transcript_id": {"S": t.transcript_id}})
    after = CollectorRegistry()
    async with running(endpoint, rules, after):
        await eventually(lambda: _finished(after)() >= len(second_batch), seconds=60)
        await asyncio.sleep(0.5)  # would pick up anything it wrongly re-read

    read_again = sum(
        _count(after, "reconciler_stream_records_total", table="transcripts", event=e, cause=c)
        for e, c in [("INSERT", "none"), ("REMOVE", "ttl")]
    )
    assert read_again == len(second_batch)  # the 10 INSERTs and first 5 REMOVEs were not read again
    for t in [*first_batch, *second_batch]:
        assert await layout.remaining(t) == 0
    stored = await layout.dynamodb.scan(TableName="reconciler-checkpoints")
    shard = dynamodb_backends[ACCOUNT_ID][REGION].get_table("transcripts").stream_shard
    assert shard is not None
    last = shard.items[-1].record["dynamodb"]["SequenceNumber"]
    shards = [i for i in stored["Items"] if not i["stream_arn"]["S"].startswith("#")]  # not the sync lease
    assert [i["checkpoint"]["S"] for i in shards] == [last]


async def test_reconciler_run_serves_probes_and_stops_on_sigterm(endpoint: str, layout: Layout) -> None:
    """The console script, configured by the standard AWS variables and RECONCILER_*, logs JSON events."""
    env = worker_env(endpoint)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", "run", "--config", str(DEMO_RULES),
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    events: list[dict[str, object]] = []
    async with asyncio.timeout(60):
        while not any(e["event"] == "shard.started" for e in events):
            events.append(json.loads(await process.stderr.readline()))
    port = int(str(next(e["http_port"] for e in events if e["event"] == "worker.started")))

    ready = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz")
    live = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
    metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    for _ in range(3):  # a malformed request: aiohttp's own logger reports it with a traceback
        assert (await asyncio.to_thread(_oversized_header, port)).startswith(b"HTTP/1.0 400")
    await asyncio.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    rest = (await asyncio.wait_for(process.stderr.read(), timeout=60)).decode().splitlines()
    assert await process.wait() == 0
    logged = [json.loads(line) for line in rest]  # every line one JSON event, tracebacks included
    bad = [e for e in logged if e["event"] == "aiohttp.server"]
    assert len(bad) == 3
    assert bad[0]["exception"][0]["type"] == "aiohttp.http_exceptions.LineTooLong"
    assert ready == (200, "consuming 1 shards\n")
    assert live == (200, "ok\n")
    assert metrics[0] == 200
    assert 'reconciler_shards_consuming{table="transcripts"} 1.0' in metrics[1]
    assert "process_cpu_seconds_total" in metrics[1]  # the process-wide registry is served
    assert [json.loads(line)["event"] for line in rest][-1] == "worker.stopped"


def _oversized_header(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        return connection.recv(64)


def _get(url: str) -> tuple[int, str]:
    """GET a loopback URL, retrying while it answers an error (readiness comes after discovery)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def test_a_prefix_holding_more_than_one_page_of_versions_is_emptied(
    endpoint: str, layout: Layout, rules: Rules
) -> None:
    """ListObjectVersions pages hold at most 1,000 entries; deleting must not stop after the first."""
    seed = BackendSeeder()
    for n in range(650):
        for version in range(2):
            seed.put_object("stt-transcripts", f"acct-1/big/part-{n:04d}", f"v{version}".encode())
    seed.put_object("stt-transcripts", "acct-1/bigger/untouched", b"x")
    call = Caller(RetryPolicy(attempts=3))
    registry = CollectorRegistry()
    items = DynamoDBItemStore(layout.dynamodb, call)
    executor = Executor(rules.compile(), S3ArtifactStore(layout.s3, call), items, Metrics(registry))
    scope = S3Location("stt-transcripts", "acct-1/big/")

    result = await executor.execute(DeletionPlan("transcripts", {}, (scope,), (), (scope,), (), ()))

    assert result.errors == []
    assert result.tally.object_versions == 1300
    assert await layout.versions("stt-transcripts", "acct-1/big/") == set()
    assert len(await layout.versions("stt-transcripts", "acct-1/bigger/")) == 1


async def test_keys_that_xml_cannot_carry_are_listed_and_deleted_exactly(
    endpoint: str, layout: Layout, rules: Rules
) -> None:
    """A key holding \\x01 used to break every listing, one holding \\r came back as \\n and was reported
    deleted while it stayed: listed URL-encoded and deleted by path, every version of each really goes."""
    odd = ["acct-1/odd/a\x01b", "acct-1/odd/c\rd", "acct-1/odd/e f+g%41", "acct-1/odd/TENANT#x/h\u00e9"]
    seed = BackendSeeder()
    for key in odd:
        for version in range(2):
            seed.put_object("stt-transcripts", key, f"v{version}".encode())
    seed.put_object("stt-transcripts", "acct-1/odd-neighbour/c\rd", b"x")
    call = Caller(RetryPolicy(attempts=3))
    registry = CollectorRegistry()
    executor = Executor(
        rules.compile(),
        S3ArtifactStore(layout.s3, call),
        DynamoDBItemStore(layout.dynamodb, call),
        Metrics(registry),
    )
    scope = S3Location("stt-transcripts", "acct-1/odd/")

    result = await executor.execute(DeletionPlan("transcripts", {}, (scope,), (), (scope,), (), ()))

    assert result.errors == []
    assert result.tally.object_versions == 8
    assert await layout.versions("stt-transcripts", "acct-1/odd/") == set()
    assert {key for key, _ in await layout.versions("stt-transcripts", "acct-1/odd-neighbour/")} == {
        "acct-1/odd-neighbour/c\rd"
    }


async def test_the_demo_verdict_sees_a_touched_linked_item_and_a_leftover(layout: Layout) -> None:
    """The demo's checks read moto's state: a live transcript's linked item deleted, or a version left behind
    for a deleted one, is counted."""
    live, gone = Transcript("acct-1", "live", expiry(_now(), 86400)), Transcript("acct-1", "gone", 0)
    await layout.add([live, gone], seed=BackendSeeder())
    before = await layout.snapshot([live])
    assert await touched(layout, [live], before) == 0

    await layout.dynamodb.delete_item(
        TableName="speech_outputs", Key={"transcript_id": {"S": "live"}, "output_type": {"S": "translation"}}
    )
    await layout.dynamodb.delete_item(TableName="llm_requests", Key={"request_id": {"S": "live#llm0"}})
    assert await touched(layout, [live], before) == 2
    # 2 versions x 5 files, 3 outputs, 2 x 2 LLM objects, 3 speech output items and 2 LLM request items.
    assert await layout.remaining(gone) == 10 + 3 + 4 + 3 + 2


async def test_the_demo_runs_end_to_end_sweeps_overdue_and_orphaned_files_and_keeps_its_promise() -> None:
    lines: list[str] = []
    assert await run_demo(12, echo=lines.append) == 0
    assert any(line.endswith("artifacts remaining for deleted items: 0") for line in lines)
    assert any(line.endswith("artifacts of live items touched: 0") for line in lines)
    assert any("all 2 overdue transcripts are gone: the sweeper deleted them" in line for line in lines)
    assert any("orphan sweep found the orphan" in line for line in lines)


async def test_a_migrations_marked_delete_cascades_nothing_while_a_ttl_expiry_still_does(
    endpoint: str, layout: Layout, tmp_path: Path
) -> None:
    """The migration footgun: moving an item with DeleteItem + PutItem must not delete its files."""
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(
        DEMO_RULES.read_text()
        + '\n[tables.transcripts.cascade]\nskip = [{ attribute = "deleted_by", equals = "migration" }]\n'
    )
    rules = load_rules(rules_file)
    moved = Transcript("acct-1", "tr-moved", expiry(_now(), 30 * 86400))
    expired = Transcript("acct-1", "tr-expired", expiry(_now(), -600))
    await layout.add([moved, expired], seed=BackendSeeder())
    before = await layout.snapshot([moved])
    registry = CollectorRegistry()

    async with running(endpoint, rules, registry):
        key = {"transcript_id": {"S": moved.transcript_id}}
        await layout.dynamodb.update_item(
            TableName="transcripts",
            Key=key,
            UpdateExpression="SET deleted_by = :m",
            ExpressionAttributeValues={":m": {"S": "migration"}},
        )
        await layout.dynamodb.delete_item(TableName="transcripts", Key=key)
        ttl_delete("transcripts", {"transcript_id": {"S": expired.transcript_id}})
        await eventually(
            lambda: (
                _count(registry, "reconciler_record_outcomes_total", table="transcripts", outcome="filtered")
                >= 1
                and _finished(registry)() >= 1
            ),
            seconds=60,
        )

    after = await layout.snapshot([moved])
    del before[f"transcripts/{moved.transcript_id}"], after[f"transcripts/{moved.transcript_id}"]
    assert after == before  # every file, output and LLM request of the moved item is still there
    assert await layout.remaining(expired) == 0
