"""Writes whose answer is lost (faults): the request ran, the connection dropped before its answer came back,
and the retry meets the state the first attempt left. Each write must read that state as its own success.

The connection is dropped by the proxy in tests/faults.py, between real aiobotocore clients and moto; a lost
answer to UpdateTimeToLive needs a stand-in, as moto does not refuse TTL enabled twice the way AWS does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError
from faults import FaultProxy, Kind, Rule

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.leases import DynamoDBLeaseStore
from reconciler.adapters.letters import DynamoDBDeadLetterStore
from reconciler.adapters.tables import CHECKPOINTS, create_table, create_worker_tables
from reconciler.core.leases import SHARD_END, Lease
from reconciler.demo.moto_server import CREDENTIALS, REGION, reset
from reconciler.ports import DeadLetter

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/transcripts/stream/2026-01-01T00:00:00.000"


def _lost_once(operation: str) -> Rule:
    return Rule(Kind.DROP_AFTER, 1.0, operations=frozenset({operation}), times=1)


@dataclass
class Proxied:
    proxy: FaultProxy
    via: AwsClients  # through the proxy
    direct: AwsClients  # straight to moto
    call: Caller


@pytest.fixture
async def proxied(endpoint: str) -> AsyncIterator[Proxied]:
    reset(endpoint)
    async with (
        FaultProxy(endpoint) as proxy,
        AwsClients(AwsSettings(region=REGION, endpoint_url=proxy.url, credentials=CREDENTIALS)) as via,
        AwsClients(AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)) as direct,
    ):
        yield Proxied(proxy, via, direct, Caller(RetryPolicy(attempts=3)))


@pytest.mark.integration
async def test_fault_a_table_whose_creation_answer_was_lost_still_gets_its_ttl(proxied: Proxied) -> None:
    proxied.proxy.rules = (_lost_once("CreateTable"),)
    created = await create_worker_tables(proxied.via.dynamodb, "checkpoints", "letters", proxied.call)
    assert proxied.proxy.count(Kind.DROP_AFTER, "CreateTable") == 1
    assert created == {"checkpoints": True, "letters": True}
    ttl = await proxied.direct.dynamodb.describe_time_to_live(TableName="checkpoints")
    assert ttl["TimeToLiveDescription"].get("TimeToLiveStatus") == "ENABLED"
    assert ttl["TimeToLiveDescription"].get("AttributeName") == CHECKPOINTS.ttl_attribute


class TtlAnswerLost:
    """A new table whose UpdateTimeToLive runs, then loses its answer; asked again, AWS refuses to enable
    TTL twice (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_UpdateTimeToLive.html)."""

    def __init__(self) -> None:
        self.ttl: str | None = None
        self.calls: list[str] = []

    async def create_table(self, **_: Any) -> dict[str, Any]:
        return {}

    async def describe_table(self, **_: Any) -> dict[str, Any]:
        return {"Table": {"TableStatus": "ACTIVE"}}

    async def update_time_to_live(self, *, TableName: str, TimeToLiveSpecification: Any) -> dict[str, Any]:  # noqa: N803
        self.calls.append("UpdateTimeToLive")
        if self.ttl is not None:
            error: Any = {
                "Error": {"Code": "ValidationException", "Message": "TimeToLive is already enabled"},
                "ResponseMetadata": {"HTTPStatusCode": 400},
            }
            raise ClientError(error, "UpdateTimeToLive")
        self.ttl = TimeToLiveSpecification["AttributeName"]
        raise ConnectionClosedError(endpoint_url="http://127.0.0.1:1/")


async def test_fault_a_lost_answer_to_enabling_ttl_is_not_a_failed_start() -> None:
    client = TtlAnswerLost()
    created = await create_table(
        client,  # type: ignore[arg-type]
        "checkpoints",
        CHECKPOINTS.attributes,
        CHECKPOINTS.ttl_attribute,
        call=Caller(RetryPolicy(attempts=3)),
        poll_seconds=0,
    )
    assert created
    assert client.ttl == CHECKPOINTS.ttl_attribute
    assert client.calls == ["UpdateTimeToLive", "UpdateTimeToLive"]


@pytest.fixture
async def leases(proxied: Proxied) -> DynamoDBLeaseStore:
    """The lease store of worker "w" through the proxy, on a lease table holding one free shard."""
    await create_worker_tables(proxied.direct.dynamodb, "checkpoints", "letters")
    store = DynamoDBLeaseStore(proxied.via.dynamodb, proxied.call, "checkpoints", "w")
    assert await store.create(Lease(ARN, "shardId-1", "transcripts"))
    return store


@pytest.mark.integration
async def test_fault_a_lease_taken_with_its_answer_lost_is_held(
    proxied: Proxied, leases: DynamoDBLeaseStore
) -> None:
    """Retried, the take's condition no longer holds (the counter moved): the token it wrote says the
    lease is ours, where a lost race would leave the shard unread for a whole lease period."""
    free = await leases.get(ARN, "shardId-1")
    assert free is not None
    proxied.proxy.rules = (_lost_once("UpdateItem"),)
    taken = await leases.take(free, "w")
    assert proxied.proxy.count(Kind.DROP_AFTER, "UpdateItem") == 1
    stored = await leases.get(ARN, "shardId-1")
    assert taken is not None
    assert stored == taken
    assert taken.owner == "w"
    assert taken.counter == free.counter + 1
    assert await leases.renew(taken) is not None


@pytest.mark.integration
async def test_fault_a_shard_end_checkpoint_with_its_answer_lost_is_not_a_lost_lease(
    proxied: Proxied, leases: DynamoDBLeaseStore
) -> None:
    """SHARD_END gives the lease up with it, so its retry finds no token: the shard's end, not a peer."""
    free = await leases.get(ARN, "shardId-1")
    assert free is not None
    taken = await leases.take(free, "w")
    assert taken is not None
    proxied.proxy.rules = (_lost_once("UpdateItem"),)
    await leases.checkpoint(taken, SHARD_END)  # no LeaseLostError
    assert proxied.proxy.count(Kind.DROP_AFTER, "UpdateItem") == 1
    ended = await leases.get(ARN, "shardId-1")
    assert ended is not None
    assert ended.ended
    assert ended.owner is None


@pytest.mark.integration
async def test_fault_a_dead_letter_written_with_its_answer_lost_is_still_new(proxied: Proxied) -> None:
    """A new letter is counted, and the dead-letter alert fires on that count: the retry finding the
    letter its own first attempt wrote must not take it for a redelivered record's."""
    await create_worker_tables(proxied.direct.dynamodb, "checkpoints", "letters")
    letters = DynamoDBDeadLetterStore(proxied.via.dynamodb, proxied.call, "letters")
    letter = DeadLetter(
        source_table="transcripts",
        stream_arn=ARN,
        shard_id="shardId-1",
        sequence_number="100",
        event_id="e-1",
        kind="unsafe",
        reason="1 targets refused by the scope check",
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        item_table="transcripts",
        item_key={"transcript_id": "tr-1"},
        targets=("out_of_scope: s3://stt-uploads/acct-2/victim/audio.wav",),
    )
    proxied.proxy.rules = (_lost_once("UpdateItem"),)
    assert await letters.put(letter)
    assert proxied.proxy.count(Kind.DROP_AFTER, "UpdateItem") == 1
    assert not await letters.put(letter)  # the same record delivered again: not a new letter
