"""The real worker, in-process, through a proxy that fails 30% of its AWS requests from start to finish:
table creation, discovery, leases, reads, deletions, checkpoints and dead letters all meet AWS's throttling
and server errors, expired iterators, latency, and connections dropped before or after the request ran.

Then the promise is checked against moto directly (own clients, not the worker's adapters): everything of
each deleted transcript is gone, every version and item of each live one is unchanged, and nothing failed
for good: the only dead letter is the tampered URI the scope check refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Mapping, MutableMapping, Sequence
from typing import Any

import pytest
import stamina
from faults import FaultProxy, Kind, Rule
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from reconciler.adapters.aws import AwsClients, AwsSettings, RetryPolicy
from reconciler.app import build_worker
from reconciler.demo.layout import BUCKETS, Layout, Transcript
from reconciler.demo.moto_server import CREDENTIALS, REGION, BackendSeeder, ttl_delete
from reconciler.demo.run import Population, local_settings, populate
from reconciler.rules import Rules
from reconciler.settings import Settings

pytestmark = pytest.mark.integration

SEEDS = (11, 23, 37)
TRANSCRIPTS = 12
# Attempts per AWS call (stamina's test mode: no waits). Six while the worker creates its tables, as the
# default policy allows: a call still failing there stops the start, by design. Then three, so that calls
# also fail after their retries and records are retried in place, holding the checkpoint (a record is tried
# up to ``max_attempts``, 50 times, before it is dead-lettered).
START_ATTEMPTS, RUN_ATTEMPTS = 6, 3
FINISH_WITHIN = 45.0
FIRED_AT_LEAST = 3  # of every kind: a suite whose faults never fire proves nothing
CHECKPOINTS = "reconciler-checkpoints"
DEAD_LETTERS = "reconciler-dead-letters"

STREAM_READS = frozenset({"DescribeStream", "GetShardIterator"})
# 30% of every request: 12% latency or dropped connections anywhere, and 18% errors of the service's own.
RULES = (
    Rule(Kind.LATENCY, 0.04),
    Rule(Kind.DROP_BEFORE, 0.04),
    Rule(Kind.DROP_AFTER, 0.04),
    Rule(Kind.SLOW_DOWN, 0.10),
    Rule(Kind.INTERNAL_ERROR, 0.08),
    Rule(Kind.THROTTLING, 0.09, services=frozenset({"dynamodb"})),
    Rule(Kind.THROUGHPUT_EXCEEDED, 0.09),
    Rule(Kind.EXPIRED_ITERATOR, 0.06, operations=frozenset({"GetRecords"})),
    Rule(Kind.TRIMMED_DATA, 0.06, operations=frozenset({"GetRecords"})),
    Rule(Kind.LIMIT_EXCEEDED, 0.06, services=frozenset({"streams"})),
    Rule(Kind.LIMIT_EXCEEDED, 0.12, services=frozenset({"streams"}), operations=STREAM_READS),
)
# A GetShardIterator answered TrimmedDataAccessException means the checkpoint was trimmed away: the worker
# rightly records a gap and starts over. Injected only into GetRecords, where it is a transient refusal.


def _settings(url: str) -> Settings:
    return local_settings(
        url,
        create_tables=True,
        idle_poll_seconds=0.01,
        max_idle_poll_seconds=0.02,
        retry_backoff_seconds=0.02,
        discovery_seconds=0.1,
        describe_stream_per_second=10,
        heartbeat_seconds=0.1,
        lease_seconds=2.0,
        checkpoint_seconds=0,
        shutdown_grace_seconds=5,
    )


@pytest.fixture
async def direct(endpoint: str, layout: Layout) -> AsyncIterator[AwsClients]:
    """Clients straight to moto (no proxy), after ``layout`` reset it and created the demo's tables."""
    async with AwsClients(
        AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    ) as clients:
        yield clients


@pytest.mark.parametrize("seed", SEEDS)
async def test_fault_thirty_percent_of_requests_failing_loses_nothing_and_touches_nothing_live(  # noqa: PLR0917 - fixtures
    endpoint: str,
    layout: Layout,
    direct: AwsClients,
    rules: Rules,
    seed: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    population = populate(TRANSCRIPTS, dt.datetime.now(dt.UTC), seed=seed)
    await layout.add([*population.deleted, *population.live], seed=BackendSeeder())
    before = await MotoState.read(direct)
    live_before = [before.of(t) for t in population.live]
    assert all(all(shot.values()) for shot in live_before)  # each holds versions and items to compare
    caplog.set_level(logging.WARNING)

    with capture_logs() as logs, stamina.set_testing(True, attempts=START_ATTEMPTS):
        async with FaultProxy(endpoint, RULES, seed=seed) as proxy:
            async with running(_settings(proxy.url), rules):
                await delete(layout, population)
                await until_checkpointed(direct, FINISH_WITHIN)
                await until_fired(proxy, FIRED_AT_LEAST, FINISH_WITHIN)
            faults = Counter({kind: proxy.count(kind) for kind in Kind})

    # -- what the worker promised, read from moto directly --
    state = await MotoState.read(direct)
    assert {t.transcript_id: state.left_of(t) for t in population.deleted if state.left_of(t)} == {}
    assert [state.of(t) for t in population.live] == live_before
    letters = await dead_letters(direct)
    assert [(letter["kind"], letter["item_key"]) for letter in letters] == [
        ("unsafe", {"transcript_id": population.requested[-1].transcript_id})
    ], letters
    ttl = await direct.dynamodb.describe_time_to_live(TableName=CHECKPOINTS)
    assert ttl["TimeToLiveDescription"].get("TimeToLiveStatus") == "ENABLED"

    # -- the faults really happened, and the worker took them quietly --
    assert all(faults[kind] >= FIRED_AT_LEAST for kind in Kind), faults
    assert_no_traceback(logs, caplog.records)
    assert_retries_named(logs)


# -- the worker under test -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(settings: Settings, rules: Rules) -> AsyncIterator[None]:
    """One worker, creating its tables, through the proxy; stopped gracefully (under faults too)."""
    aws = AwsSettings(region=REGION, endpoint_url=settings.endpoint_url, credentials=CREDENTIALS)
    retry = RetryPolicy(attempts=START_ATTEMPTS)
    async with build_worker(settings, rules, CollectorRegistry(), retry, aws) as worker:
        stamina.set_testing(True, attempts=RUN_ATTEMPTS)  # restored by the caller's set_testing
        task = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            worker.handle_exit()
            await asyncio.wait_for(task, timeout=30)


async def delete(layout: Layout, population: Population) -> None:
    """DynamoDB's TTL service and customers delete transcripts, straight on moto."""
    for t in population.ttl:
        ttl_delete("transcripts", {"transcript_id": {"S": t.transcript_id}})
    for t in [*population.expired, *population.requested]:
        await layout.dynamodb.delete_item(
            TableName="transcripts", Key={"transcript_id": {"S": t.transcript_id}}
        )


async def until_checkpointed(direct: AwsClients, seconds: float) -> None:
    """Until the checkpoint of every shard of the transcripts stream stands at its last record."""
    table = await direct.dynamodb.describe_table(TableName="transcripts")
    arn = table["Table"]["LatestStreamArn"]
    shards = (await direct.streams.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"]
    last = {shard["ShardId"]: await last_sequence(direct, arn, shard["ShardId"]) for shard in shards}
    stood: dict[str, str | None] = {}
    try:
        async with asyncio.timeout(seconds):
            while True:
                for shard in last:
                    row = await direct.dynamodb.get_item(
                        TableName=CHECKPOINTS,
                        Key={"stream_arn": {"S": arn}, "shard_id": {"S": shard}},
                        ConsistentRead=True,
                    )
                    stood[shard] = row.get("Item", {}).get("checkpoint", {}).get("S")
                if all(stood[shard] == sequence for shard, sequence in last.items()):
                    return
                await asyncio.sleep(0.2)
    except TimeoutError:
        pytest.fail(f"checkpoints {stood} did not reach the streams' last records {last} in {seconds}s")


async def until_fired(proxy: FaultProxy, times: int, seconds: float) -> None:
    """Until every kind of fault was injected ``times`` times: stream reads are few while records are in
    flight (the reader stays one page ahead), so the idle polls that follow meet the rest."""
    try:
        async with asyncio.timeout(seconds):
            while any(proxy.count(kind) < times for kind in Kind):  # noqa: ASYNC110 - polling counters
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not every fault fired {times} times in {seconds}s: {proxy.injected}")


async def last_sequence(direct: AwsClients, arn: str, shard: str) -> str:
    iterator: str | None = (
        await direct.streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )
    )["ShardIterator"]
    last = ""
    while iterator:
        page = await direct.streams.get_records(ShardIterator=iterator)
        if not page["Records"]:
            return last
        last = page["Records"][-1]["dynamodb"]["SequenceNumber"]
        iterator = page.get("NextShardIterator")
    return last


# -- invariants, read from moto directly (a peer of the crash suite's checker, tests/invariants.py) -------


class MotoState:
    """Every object version, delete marker and item of the demo layout, read whole: one listing per
    bucket and one scan per table (moto copies a bucket's every version on each listing, whatever the
    prefix)."""

    def __init__(
        self, versions: dict[str, set[tuple[str, ...]]], items: dict[str, list[dict[str, Any]]]
    ) -> None:
        self.versions = versions
        self.items = items

    @classmethod
    async def read(cls, direct: AwsClients) -> MotoState:
        versions: dict[str, set[tuple[str, ...]]] = {}
        for bucket in BUCKETS:
            found = versions[bucket] = set()
            async for page in direct.s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                for v in page.get("Versions", []):
                    found.add((v["Key"], v["VersionId"], v["ETag"], str(v["Size"]), str(v["IsLatest"])))
                for m in page.get("DeleteMarkers", []):
                    found.add((m["Key"], m["VersionId"], "delete marker", "", str(m["IsLatest"])))
        items: dict[str, list[dict[str, Any]]] = {}
        for table in ("transcripts", "speech_outputs", "llm_requests"):
            items[table] = []
            async for scanned in direct.dynamodb.get_paginator("scan").paginate(
                TableName=table, ConsistentRead=True
            ):
                items[table] += scanned["Items"]
        return cls(versions, items)

    def of(self, t: Transcript) -> dict[str, Any]:
        """Everything of one transcript, whole: versions (with what identifies their bytes) under each of
        its prefixes, its item and the items linked to it, as canonical JSON."""
        shot: dict[str, Any] = {
            f"s3://{bucket}/{prefix}": sorted(v for v in self.versions[bucket] if v[0].startswith(prefix))
            for bucket, prefix in t.scopes()
        }
        linked = (
            ("transcripts", "transcript_id", {t.transcript_id}),
            ("speech_outputs", "transcript_id", {t.transcript_id}),
            ("llm_requests", "request_id", set(t.requests)),
        )
        for table, attribute, values in linked:
            shot[table] = sorted(
                _canonical(item) for item in self.items[table] if item[attribute]["S"] in values
            )
        return shot

    def left_of(self, t: Transcript) -> list[str]:
        """What remains of a deleted transcript: versions, delete markers, its item, linked items."""
        return [f"{where}: {what}" for where, found in self.of(t).items() for what in found]


async def dead_letters(direct: AwsClients) -> list[dict[str, Any]]:
    letters: list[dict[str, Any]] = []
    async for page in direct.dynamodb.get_paginator("scan").paginate(TableName=DEAD_LETTERS):
        for item in page["Items"]:
            key = {k: v["S"] for k, v in item.get("item_key", {}).get("M", {}).items()}
            letters.append({"kind": item["kind"]["S"], "item_key": key, "reason": item["reason"]["S"]})
    return letters


def _canonical(item: Mapping[str, Any]) -> str:
    return json.dumps(item, sort_keys=True)


# -- logs ------------------------------------------------------------------------------------------------


def assert_no_traceback(events: Sequence[MutableMapping[str, Any]], records: list[logging.LogRecord]) -> None:
    """An injected fault is an expected event: never ``log.exception``, never a stdlib traceback."""
    rendered = [e for e in events if e.get("exc_info") or "exception" in e]
    assert rendered == [], rendered
    assert [r.getMessage() for r in records if r.exc_info] == []


def assert_retries_named(events: Sequence[MutableMapping[str, Any]]) -> None:
    """Every retry names its AWS operation, and the bucket, table or stream unless it has none."""
    retries = [e for e in events if e["event"] == "aws.retry_scheduled"]
    assert retries
    unnamed = [e for e in retries if e["operation"] in {"?", "<context block>"}]
    assert unnamed == [], unnamed
    anonymous = [e for e in retries if e["resource"] is None and e["operation"] != "get_records"]
    assert anonymous == [], anonymous
    operations = {e["operation"] for e in retries}
    assert {"list_object_versions", "delete_objects", "update_item", "get_records"} <= operations, operations
