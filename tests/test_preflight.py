"""Pre-flight: every resource is checked before anything is consumed, each problem named, exit code 4;
transient trouble is waited out, never fatal. On moto's HTTP server; refusals AWS would send for a missing IAM
grant or a throttle are injected at the client (botocore's ``before-call`` event answers instead of moto)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, Literal

import pytest
import structlog
from conftest import DEMO_RULES, worker_env

from reconciler import cli
from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.probes import AwsResourceProbe
from reconciler.core.spec import ExpiryIndex
from reconciler.demo.layout import Layout
from reconciler.demo.moto_server import CREDENTIALS, REGION
from reconciler.preflight import OwnTable, Preflight, PreflightError, Problem, requirements
from reconciler.rules import Rules

OWN = {
    "reconciler-checkpoints": OwnTable("checkpoint table"),
    "reconciler-dead-letters": OwnTable("dead-letter table", frozenset({"by-kind-status"})),
}


@pytest.fixture
async def clients(endpoint: str, layout: Layout) -> AsyncIterator[AwsClients]:
    async with AwsClients(
        AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    ) as opened:
        yield opened


def refuse(clients: AwsClients, event: str, code: str, times: int | None = None) -> list[int]:
    """Answer the calls ``event`` names with AWS error ``code`` (``times`` times, or always), not moto."""
    calls = [0]

    def answer(**_: Any) -> tuple[Any, dict[str, Any]] | None:
        calls[0] += 1
        if times is not None and calls[0] > times:
            return None
        status = 400 if code.endswith(("Exception", "Denied")) else 503
        parsed = {
            "Error": {"Code": code, "Message": "injected"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return SimpleNamespace(status_code=status, headers={}), parsed

    service = event.split(".")[1]
    client = {"s3": clients.s3, "dynamodb": clients.dynamodb, "dynamodb-streams": clients.streams}[service]
    # botocore's stubs type handlers as returning None; a before-call handler may answer instead.
    client.meta.events.register(event, answer)  # type: ignore[arg-type]
    return calls


def preflight(clients: AwsClients, rules: Rules, own: dict[str, OwnTable] | None = None) -> Preflight:
    probe = AwsResourceProbe(clients.dynamodb, clients.streams, clients.s3, Caller(RetryPolicy()))
    return Preflight(requirements(rules.compile(), own or {}), probe, first_wait=0.01, max_wait=0.02)


async def problems_of(check: Preflight) -> tuple[Problem, ...]:
    try:
        assert await check.run(asyncio.Event())
    except PreflightError as exc:
        return exc.problems
    return ()


def test_requirements_name_every_table_index_and_bucket_the_rules_reach(rules: Rules) -> None:
    needs = requirements(rules.compile(), OWN)
    assert needs.sources == ("transcripts",)
    assert dict(needs.linked) == {"llm_requests": {"by_transcript"}, "speech_outputs": frozenset()}
    # Every scope of the demo begins with a placeholder: its static prefix is the whole bucket.
    assert dict(needs.buckets) == dict.fromkeys(sorted(rules.compile().buckets), ("",))
    assert needs.own_tables == OWN


async def test_a_correct_deployment_passes_preflight(clients: AwsClients, rules: Rules) -> None:
    await clients.dynamodb.create_table(
        TableName="reconciler-checkpoints",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
    )
    own = {"reconciler-checkpoints": OwnTable("checkpoint table")}
    with structlog.testing.capture_logs() as events:
        assert await problems_of(preflight(clients, rules, own)) == ()
    assert [e["event"] for e in events if e["event"].startswith("preflight.")] == ["preflight.passed"]


async def test_every_missing_resource_is_named_at_once(clients: AwsClients, rules: Rules) -> None:
    await clients.dynamodb.delete_table(TableName="speech_outputs")
    await clients.dynamodb.update_table(
        TableName="llm_requests", GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "by_transcript"}}]
    )
    await clients.s3.delete_bucket(Bucket="stt-llm-gateway")
    await clients.dynamodb.update_table(TableName="transcripts", StreamSpecification={"StreamEnabled": False})

    found = await problems_of(preflight(clients, rules, OWN))

    assert found == (
        Problem("bucket 'stt-llm-gateway'", "does not exist"),
        Problem("checkpoint table 'reconciler-checkpoints'", OWN_MISSING),
        Problem("dead-letter table 'reconciler-dead-letters'", OWN_MISSING),
        Problem("index 'by_transcript' of linked table 'llm_requests'", "does not exist"),
        Problem("linked table 'speech_outputs'", "does not exist"),
        Problem(
            "source table 'transcripts'", "has no stream; enable one with OLD_IMAGE or NEW_AND_OLD_IMAGES"
        ),
    )


OWN_MISSING = "does not exist (create it from deploy/aws/tables.cfn.yaml, or run with --create-tables)"


VIEWS: tuple[Literal["KEYS_ONLY", "NEW_IMAGE"], ...] = ("KEYS_ONLY", "NEW_IMAGE")


@pytest.mark.parametrize("view", VIEWS)
async def test_a_stream_without_old_images_is_a_problem(
    clients: AwsClients, rules: Rules, view: Literal["KEYS_ONLY", "NEW_IMAGE"]
) -> None:
    await clients.dynamodb.delete_table(TableName="transcripts")
    await clients.dynamodb.create_table(
        TableName="transcripts",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "transcript_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "transcript_id", "AttributeType": "S"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": view},
    )
    found = await problems_of(preflight(clients, rules))
    assert found == (
        Problem("source table 'transcripts'", f"streams {view}; OLD_IMAGE or NEW_AND_OLD_IMAGES is needed"),
    )


@pytest.mark.parametrize(
    ("event", "code", "expected"),
    [
        (
            "before-call.dynamodb.DeleteItem",
            "AccessDeniedException",
            Problem("linked table 'llm_requests'", "not allowed: dynamodb:DeleteItem"),
        ),
        (
            "before-call.dynamodb.Query",
            "AccessDeniedException",
            Problem("linked table 'llm_requests' index 'by_transcript'", "not allowed: dynamodb:Query"),
        ),
        (
            "before-call.dynamodb-streams.GetRecords",
            "AccessDeniedException",
            Problem("stream of table 'transcripts'", "not allowed: dynamodb:GetRecords"),
        ),
        (
            "before-call.dynamodb.BatchGetItem",
            "AccessDeniedException",
            Problem("source table 'transcripts'", "not allowed: dynamodb:BatchGetItem"),
        ),
        (
            "before-call.s3.ListObjectVersions",
            "AccessDenied",
            Problem("bucket 'stt-llm-gateway'", "not allowed: s3:ListBucketVersions"),
        ),
        (
            "before-call.dynamodb.DescribeTable",
            "UnrecognizedClientException",
            Problem("source table 'transcripts'", "AWS refused the credentials: UnrecognizedClientException"),
        ),
    ],
)
async def test_a_missing_iam_grant_is_named_with_its_action(
    clients: AwsClients, rules: Rules, event: str, code: str, expected: Problem
) -> None:
    refuse(clients, event, code)
    found = await problems_of(preflight(clients, rules))
    assert expected in found


async def test_the_delete_grant_probe_never_deletes_an_item(clients: AwsClients, rules: Rules) -> None:
    """The impossible conditional delete is sent with the probe's own key value: an item holding exactly
    that key survives it."""
    for table, key in (("speech_outputs", "transcript_id"), ("llm_requests", "request_id")):
        item = {key: {"S": "#reconciler-preflight"}, "output_type": {"S": "#reconciler-preflight"}}
        await clients.dynamodb.put_item(TableName=table, Item=item)
    assert await problems_of(preflight(clients, rules)) == ()
    for table, key in (("speech_outputs", "transcript_id"), ("llm_requests", "request_id")):
        scanned = await clients.dynamodb.scan(TableName=table)
        assert [i[key]["S"] for i in scanned["Items"]] == ["#reconciler-preflight"]


async def test_throttling_at_start_is_waited_out_and_logged(clients: AwsClients, rules: Rules) -> None:
    calls = refuse(clients, "before-call.dynamodb.DescribeTable", "ThrottlingException", times=7)
    beats: list[int] = []
    with structlog.testing.capture_logs() as events:
        check = preflight(clients, rules)
        assert await check.run(asyncio.Event(), beat=lambda: beats.append(1))
    assert calls[0] > 7  # every throttled answer was seen, and the checks went on past them
    waiting = [e for e in events if e["event"] == "preflight.waiting"]
    assert waiting
    assert {e["error_type"] for e in waiting} == {"TransientError"}
    assert beats  # liveness was kept fresh while waiting


async def test_a_stop_while_waiting_ends_preflight_without_an_error(
    clients: AwsClients, rules: Rules
) -> None:
    refuse(clients, "before-call.dynamodb.DescribeTable", "ThrottlingException")
    stopping = asyncio.Event()
    check = preflight(clients, rules)
    task = asyncio.create_task(check.run(stopping))
    try:
        await asyncio.sleep(0.1)
        assert not task.done()
        stopping.set()
        assert await asyncio.wait_for(task, timeout=5) is False
    finally:
        task.cancel()


async def test_run_exits_with_code_4_naming_each_problem(endpoint: str, layout: Layout) -> None:
    await layout.dynamodb.delete_table(TableName="speech_outputs")
    await layout.s3.delete_bucket(Bucket="stt-llm-gateway")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "reconciler", "run"],
        env=worker_env(endpoint, config=str(DEMO_RULES)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == cli.EXIT_PREFLIGHT == 4
    assert "reconciler: pre-flight found 2 problems:" in done.stderr
    assert "  bucket 'stt-llm-gateway': does not exist" in done.stderr
    assert "  linked table 'speech_outputs': does not exist" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("action", ["Scan", "DeleteItem"])
async def test_with_expiry_enforcement_the_sweep_grants_on_sources_are_checked(
    clients: AwsClients, rules: Rules, action: str
) -> None:
    refuse(clients, f"before-call.dynamodb.{action}", "AccessDeniedException")
    probe = AwsResourceProbe(clients.dynamodb, clients.streams, clients.s3, Caller(RetryPolicy()))
    swept = Preflight(requirements(rules.compile(), {}, swept=["transcripts"]), probe, first_wait=0.01)
    expected = Problem("source table 'transcripts'", f"not allowed: dynamodb:{action}")
    assert expected in await problems_of(swept)
    assert expected not in await problems_of(preflight(clients, rules))  # enforcement off: not needed


async def test_with_the_orphan_sweep_on_the_scan_of_each_linked_table_it_reads_is_checked(
    clients: AwsClients, rules: Rules
) -> None:
    refuse(clients, "before-call.dynamodb.Scan", "AccessDeniedException")
    probe = AwsResourceProbe(clients.dynamodb, clients.streams, clients.s3, Caller(RetryPolicy()))
    scanned = Preflight(requirements(rules.compile(), {}, scanned=["llm_requests"]), probe, first_wait=0.01)
    expected = Problem("linked table 'llm_requests'", "not allowed: dynamodb:Scan")
    assert expected in await problems_of(scanned)
    assert expected not in await problems_of(preflight(clients, rules))  # the sweep off: not needed


@pytest.mark.parametrize("code", ["ExpiredIteratorException", "TrimmedDataAccessException"])
async def test_a_shard_read_at_an_awkward_moment_still_proves_the_grant(
    clients: AwsClients, rules: Rules, code: str
) -> None:
    """A fault, not a problem: the read was allowed, which is all the pre-flight asks."""
    calls = refuse(clients, "before-call.dynamodb-streams.GetRecords", code)
    assert await problems_of(preflight(clients, rules)) == ()
    assert calls[0] == 1


async def test_a_dead_letter_table_without_its_index_is_a_problem(clients: AwsClients, rules: Rules) -> None:
    """A table from before the index (letters are listed through it) is named, with how to add it."""
    await clients.dynamodb.create_table(
        TableName="reconciler-dead-letters",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "letter_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "letter_id", "AttributeType": "S"}],
    )
    own = {"reconciler-dead-letters": OWN["reconciler-dead-letters"]}
    assert await problems_of(preflight(clients, rules, own)) == (
        Problem(
            "index 'by-kind-status' of dead-letter table 'reconciler-dead-letters'",
            "does not exist (add it: create it from deploy/aws/tables.cfn.yaml, or run with --create-tables)",
        ),
    )


async def test_a_swept_source_with_an_expiry_index_needs_the_index_keyed_by_the_ttl(
    clients: AwsClients,
) -> None:
    probe = AwsResourceProbe(clients.dynamodb, clients.streams, clients.s3, Caller(RetryPolicy()))
    index = ExpiryIndex("by-expiry", "expiry_shard", ("s0", "s1"))
    where = "expiry index 'by-expiry' of source table 'transcripts'"

    async def checked() -> list[Problem]:
        return await probe.source("transcripts", sweep=True, index=index, ttl="expires_at")

    assert await checked() == [Problem(where, "does not exist")]
    await _add_index(clients, "by-expiry", "expiry_shard", "created_at")
    wanted = "must have partition key 'expiry_shard' and sort key 'expires_at'"
    assert await checked() == [Problem(where, wanted)]
    await clients.dynamodb.update_table(
        TableName="transcripts", GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "by-expiry"}}]
    )
    await _add_index(clients, "by-expiry", "expiry_shard", "expires_at")
    assert await checked() == []
    refuse(clients, "before-call.dynamodb.Query", "AccessDeniedException")
    assert await checked() == [Problem(where, "not allowed: dynamodb:Query")]


async def _add_index(clients: AwsClients, name: str, partition: str, sort: str) -> None:
    """A KEYS_ONLY index on ``partition`` (a String) and ``sort`` (a Number) of the transcripts table."""
    await clients.dynamodb.update_table(
        TableName="transcripts",
        AttributeDefinitions=[  # the table's own key too: moto replaces the definitions
            {"AttributeName": "transcript_id", "AttributeType": "S"},
            {"AttributeName": partition, "AttributeType": "S"},
            {"AttributeName": sort, "AttributeType": "N"},
        ],
        GlobalSecondaryIndexUpdates=[
            {
                "Create": {
                    "IndexName": name,
                    "KeySchema": [
                        {"AttributeName": partition, "KeyType": "HASH"},
                        {"AttributeName": sort, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            }
        ],
    )
