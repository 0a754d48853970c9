"""One contract, two implementations: ``FakeReceiptStore`` keeps the promises of ``DynamoDBReceiptStore``.

Every test runs against the fake and against the adapter on moto's HTTP server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import time
from collections.abc import AsyncIterator

import pytest

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.receipts import DynamoDBReceiptStore
from reconciler.adapters.tables import RECEIPTS, create_worker_tables
from reconciler.core.plan import key_hash
from reconciler.core.scope import S3Location
from reconciler.demo.moto_server import CREDENTIALS, REGION, reset
from reconciler.ports import ItemKey, Receipt, ReceiptCounts, ReceiptStore
from reconciler.testing import FakeReceiptStore

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/transcripts/stream/2026-01-01T00:00:00.000"
AT = dt.datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)
RETENTION_DAYS = 400


def _receipt(sequence: int = 7, *, at: dt.datetime = AT, **changes: object) -> Receipt:
    receipt = Receipt(
        table="transcripts",
        key={"transcript_id": "tr-1"},
        cause="ttl",
        event=f"{ARN}#shardId-1#{sequence:021d}",
        event_time=at,
        completed_at=at + dt.timedelta(seconds=3),
        counts=ReceiptCounts(
            object_versions=17, delete_markers=1, under_prefixes=12, linked_items=5, absent=2
        ),
        verification="verified",
        expires_at=at - dt.timedelta(hours=1),
        verified_at=at + dt.timedelta(seconds=4),
        objects=(S3Location("stt-uploads", "acct-1/tr-1/audio.wav"),),
        prefixes=(S3Location("stt-transcripts", "acct-1/tr-1/"),),
        items=(
            ItemKey("speech_outputs", {"transcript_id": "tr-1", "output_type": "translation"}),
            ItemKey("numbered", {"id": decimal.Decimal(42), "blob": b"\x00\x01"}),
        ),
    )
    return dataclasses.replace(receipt, **changes)  # type: ignore[arg-type]


@pytest.fixture(params=["fake", pytest.param("moto", marks=pytest.mark.integration)])
async def receipts(request: pytest.FixtureRequest) -> AsyncIterator[ReceiptStore]:
    if request.param == "fake":
        yield FakeReceiptStore()
        return
    endpoint = request.getfixturevalue("endpoint")
    reset(endpoint)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        await create_worker_tables(clients.dynamodb, "checkpoints", "letters", receipts="receipts")
        yield DynamoDBReceiptStore(
            clients.dynamodb, Caller(RetryPolicy(attempts=3)), "receipts", RETENTION_DAYS
        )


async def test_a_receipt_reads_back_as_written_by_table_and_key_hash(receipts: ReceiptStore) -> None:
    receipt = _receipt()
    assert await receipts.put(receipt) is True
    assert await receipts.get("transcripts", key_hash("transcripts", receipt.key)) == receipt


async def test_a_receipt_with_refused_targets_and_no_expiry_reads_back_as_written(
    receipts: ReceiptStore,
) -> None:
    receipt = _receipt(
        expires_at=None,
        verified_at=None,
        verification="not_checked",
        dead_letter_id=f"{ARN}#shardId-1#{7:021d}#unsafe",
        dead_letter_kind="unsafe",
        dead_letter_status="pending",
        objects=(),
        prefixes=(),
        items=(),
        omitted=3,
    )
    await receipts.put(receipt)
    assert await receipts.get("transcripts", key_hash("transcripts", receipt.key)) == receipt


async def test_there_is_no_receipt_for_a_key_never_deleted_or_of_another_table(
    receipts: ReceiptStore,
) -> None:
    await receipts.put(_receipt())
    assert await receipts.get("transcripts", key_hash("transcripts", {"transcript_id": "tr-2"})) is None
    assert await receipts.get("other", key_hash("transcripts", {"transcript_id": "tr-1"})) is None


async def test_a_receipt_written_again_for_its_event_keeps_the_first(receipts: ReceiptStore) -> None:
    """A redelivered record writes the same receipt: the first one stays, whatever the retry counted."""
    first = _receipt()
    assert await receipts.put(first) is True
    retry = _receipt(counts=ReceiptCounts(absent=5), completed_at=AT + dt.timedelta(minutes=5))
    assert await receipts.put(retry) is False
    assert await receipts.get("transcripts", key_hash("transcripts", first.key)) == first


async def test_a_later_deletion_of_the_key_replaces_its_receipt_and_an_earlier_one_never_does(
    receipts: ReceiptStore,
) -> None:
    hashed = key_hash("transcripts", {"transcript_id": "tr-1"})
    first, later = _receipt(7), _receipt(9, at=AT + dt.timedelta(days=1))
    await receipts.put(first)
    assert await receipts.put(later) is True
    assert await receipts.get("transcripts", hashed) == later
    assert await receipts.put(_receipt(8, at=AT + dt.timedelta(hours=1))) is False
    assert await receipts.get("transcripts", hashed) == later
    same_second = _receipt(10, at=AT + dt.timedelta(days=1))  # AWS rounds event times to the second
    assert await receipts.put(same_second) is True


async def test_an_update_replaces_the_receipt_of_its_event_and_an_earlier_ones_never_a_later_ones(
    receipts: ReceiptStore,
) -> None:
    """A redrive that finished a letter's work rewrites the receipt of the letter's stream record."""
    hashed = key_hash("transcripts", {"transcript_id": "tr-1"})
    redriven = _receipt(counts=ReceiptCounts(object_versions=20), dead_letter_status="redriven")
    assert await receipts.update(_receipt(6, at=AT - dt.timedelta(hours=1))) is True  # none there: new
    assert await receipts.update(_receipt()) is True  # over an earlier event's
    assert await receipts.update(redriven) is True  # over its own event's
    assert await receipts.get("transcripts", hashed) == redriven
    later = _receipt(9, at=AT + dt.timedelta(days=1))
    await receipts.put(later)
    assert await receipts.update(redriven) is False
    assert await receipts.get("transcripts", hashed) == later


@pytest.mark.integration
async def test_a_stored_receipt_expires_after_the_retention(endpoint: str) -> None:
    reset(endpoint)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        await create_worker_tables(clients.dynamodb, "checkpoints", "letters", receipts="receipts")
        store = DynamoDBReceiptStore(clients.dynamodb, Caller(RetryPolicy(attempts=3)), "receipts", 30)
        now = dt.datetime.now(dt.UTC)
        await store.put(_receipt(at=now))
        (item,) = (await clients.dynamodb.scan(TableName="receipts"))["Items"]
        ttl = await clients.dynamodb.describe_time_to_live(TableName="receipts")
    assert ttl["TimeToLiveDescription"].get("AttributeName") == RECEIPTS.ttl_attribute
    assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
    retained = int(item["retain_until"]["N"]) - time.time()
    assert abs(retained - 30 * 86400) < 60
