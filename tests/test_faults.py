"""The fault proxy itself (tests/faults.py): each fault reaches a real aiobotocore client as the error AWS
would send, drops lose the request or only its answer, and what is injected is counted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from faults import Call, FaultProxy, Kind, Rule, identify
from structlog.testing import capture_logs

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy, is_retriable
from reconciler.adapters.s3 import S3ArtifactStore
from reconciler.core.scope import S3Location
from reconciler.demo.moto_server import CREDENTIALS, REGION, reset
from reconciler.errors import TransientError

pytestmark = pytest.mark.integration

Op = Callable[[AwsClients], Awaitable[Any]]


async def _put(clients: AwsClients) -> Any:
    return await clients.dynamodb.put_item(TableName="faults", Item={"id": {"S": "one"}})


ERRORS: list[tuple[Kind, str, int, Op]] = [
    (Kind.SLOW_DOWN, "DeleteObjects", 503, lambda c: c.s3.delete_objects(
        Bucket="faults", Delete={"Objects": [{"Key": "a", "VersionId": "v"}]})),
    (Kind.INTERNAL_ERROR, "ListObjectVersions", 500, lambda c: c.s3.list_object_versions(Bucket="faults")),
    (Kind.THROTTLING, "PutItem", 400, _put),
    (Kind.THROUGHPUT_EXCEEDED, "Query", 400, lambda c: c.dynamodb.query(
        TableName="faults", KeyConditionExpression="id = :i",
        ExpressionAttributeValues={":i": {"S": "one"}})),
    (Kind.EXPIRED_ITERATOR, "GetRecords", 400, lambda c: c.streams.get_records(ShardIterator="it")),
    (Kind.TRIMMED_DATA, "GetShardIterator", 400, lambda c: c.streams.get_shard_iterator(
        StreamArn="arn:aws:dynamodb:us-east-1:123456789012:table/faults/stream/x",
        ShardId="shardId-00000001700000000000-00000000", ShardIteratorType="TRIM_HORIZON")),
    (Kind.LIMIT_EXCEEDED, "DescribeStream", 400, lambda c: c.streams.describe_stream(
        StreamArn="arn:aws:dynamodb:us-east-1:123456789012:table/faults/stream/x")),
]  # fmt: skip


@pytest.fixture
async def proxied(endpoint: str) -> AsyncIterator[tuple[FaultProxy, AwsClients, AwsClients]]:
    """A proxy with no rules yet, clients through it, and clients straight to moto."""
    reset(endpoint)
    async with (
        FaultProxy(endpoint, seed=1) as proxy,
        AwsClients(AwsSettings(region=REGION, endpoint_url=proxy.url, credentials=CREDENTIALS)) as via,
        AwsClients(AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)) as direct,
    ):
        await direct.s3.create_bucket(Bucket="faults")
        await direct.dynamodb.create_table(
            TableName="faults",
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        )
        yield proxy, via, direct


async def test_fault_each_error_shape_parses_in_botocore_as_its_aws_code(
    proxied: tuple[FaultProxy, AwsClients, AwsClients],
) -> None:
    proxy, via, _ = proxied
    for kind, operation, status, call in ERRORS:
        proxy.rules = (Rule(kind, 1.0, operations=frozenset({operation})),)
        with pytest.raises(ClientError) as raised:
            await call(via)
        response: Any = raised.value.response
        assert response["Error"]["Code"] == kind.value
        assert response["Error"]["Message"]
        assert response["ResponseMetadata"]["HTTPStatusCode"] == status, kind
        assert response["ResponseMetadata"]["RequestId"], kind
        assert raised.value.operation_name == operation
        assert proxy.count(kind) == proxy.count(kind, operation) == 1
        assert is_retriable(raised.value) is (kind not in {Kind.EXPIRED_ITERATOR, Kind.TRIMMED_DATA}), kind


async def test_fault_a_connection_dropped_before_forwarding_never_runs_the_request_and_after_loses_its_answer(
    proxied: tuple[FaultProxy, AwsClients, AwsClients],
) -> None:
    proxy, via, direct = proxied
    proxy.rules = (Rule(Kind.DROP_BEFORE, 1.0),)
    with pytest.raises(Exception) as raised:  # noqa: PT011 - whichever connection error botocore raises
        await _put(via)
    assert is_retriable(raised.value)
    assert "Item" not in await direct.dynamodb.get_item(TableName="faults", Key={"id": {"S": "one"}})
    assert proxy.count(Kind.DROP_BEFORE, "PutItem") == 1

    proxy.rules = (Rule(Kind.DROP_AFTER, 1.0),)
    with pytest.raises(Exception) as raised:  # noqa: PT011 - whichever connection error botocore raises
        await _put(via)
    assert is_retriable(raised.value)
    assert "Item" in await direct.dynamodb.get_item(TableName="faults", Key={"id": {"S": "one"}})
    assert proxy.count(Kind.DROP_AFTER, "PutItem") == 1


async def test_fault_latency_delays_a_request_that_then_succeeds_and_disabled_rules_inject_nothing(
    proxied: tuple[FaultProxy, AwsClients, AwsClients],
) -> None:
    proxy, via, _ = proxied
    proxy.rules = (Rule(Kind.LATENCY, 1.0),)
    await _put(via)
    assert proxy.count(Kind.LATENCY) == 1
    proxy.enabled = False
    await _put(via)
    assert proxy.count(Kind.LATENCY) == 1
    assert proxy.calls["PutItem"] == 2


def test_fault_requests_are_named_as_aws_names_them() -> None:
    assert identify("POST", "/", "", "DynamoDB_20120810.UpdateItem") == Call("dynamodb", "UpdateItem")
    assert identify("POST", "/", "", "DynamoDBStreams_20120810.GetRecords") == Call("streams", "GetRecords")
    assert identify("GET", "/b", "versions&prefix=a%2F", None) == Call("s3", "ListObjectVersions")
    assert identify("POST", "/b", "delete", None) == Call("s3", "DeleteObjects")
    assert identify("PUT", "/b", "versioning", None) == Call("s3", "PutBucketVersioning")
    assert identify("PUT", "/b", "", None) == Call("s3", "CreateBucket")
    assert identify("PUT", "/b/a/key.json", "", None) == Call("s3", "PutObject")
    assert identify("DELETE", "/b/a/key.json", "versionId=x", None) == Call("s3", "DeleteObject")


def test_fault_rates_add_up_and_each_request_meets_at_most_one_fault() -> None:
    proxy = FaultProxy(
        "http://127.0.0.1:1",
        [Rule(Kind.THROTTLING, 0.25), Rule(Kind.DROP_AFTER, 0.25), Rule(Kind.SLOW_DOWN, 0.5)],
        seed=3,
    )
    drawn = [proxy.choose(Call("dynamodb", "PutItem")) for _ in range(4000)]
    assert Kind.SLOW_DOWN not in drawn  # no S3 shape on DynamoDB
    assert 0.45 < sum(k is not None for k in drawn) / len(drawn) < 0.55
    assert proxy.count(Kind.THROTTLING) + proxy.count(Kind.DROP_AFTER) == sum(k is not None for k in drawn)


def test_fault_an_error_is_only_configured_where_it_has_a_shape() -> None:
    with pytest.raises(ValueError, match="no shape"):
        Rule(Kind.SLOW_DOWN, 0.1, services=frozenset({"dynamodb"}))
    with pytest.raises(ValueError, match="share"):
        Rule(Kind.THROTTLING, 1.5)


def test_fault_a_rule_with_a_limit_fires_no_more_than_that_and_then_leaves_its_share_to_the_others() -> None:
    proxy = FaultProxy(
        "http://127.0.0.1:1",
        [
            Rule(Kind.DROP_AFTER, 1.0, operations=frozenset({"CreateTable"}), times=2),
            Rule(Kind.THROTTLING, 1.0),
        ],
    )
    drawn = [proxy.choose(Call("dynamodb", "CreateTable")) for _ in range(5)]
    assert drawn == [Kind.DROP_AFTER, Kind.DROP_AFTER, Kind.THROTTLING, Kind.THROTTLING, Kind.THROTTLING]


async def test_fault_retries_and_the_error_after_them_name_the_operation_and_its_bucket(
    proxied: tuple[FaultProxy, AwsClients, AwsClients],
) -> None:
    proxy, via, _ = proxied
    proxy.rules = (Rule(Kind.SLOW_DOWN, 1.0, operations=frozenset({"ListObjectVersions"})),)
    store = S3ArtifactStore(via.s3, Caller(RetryPolicy(attempts=3)))
    with capture_logs() as logs, pytest.raises(TransientError) as raised:
        async for _ in store.list_versions(S3Location("faults", "acct-1/tr-1/"), exact=False):
            pass
    assert str(raised.value) == "AWS call failed after retries: SlowDown (list_object_versions on faults)"
    retries = [
        (e["operation"], e["resource"], e["error"]) for e in logs if e["event"] == "aws.retry_scheduled"
    ]
    assert retries == [("list_object_versions", "faults", "SlowDown")] * 2
    assert "acct-1" not in str(logs)  # a prefix is part of a key: never logged
