"""The sweeper's ports, one contract for the fakes and the aiobotocore adapters on moto: the expiry Scan
returns due keys only, segments split a table, the delete holds only while the TTL is due, and sweep
positions are written only under the segment lease and never move back."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.leases import DynamoDBLeaseStore
from reconciler.adapters.sweep import DynamoDBExpiredItems, DynamoDBSweepPositions
from reconciler.adapters.tables import create_table
from reconciler.core.dynamodb_json import encode_key
from reconciler.core.leases import Lease
from reconciler.core.spec import ExpiryIndex
from reconciler.demo.layout import Layout
from reconciler.demo.moto_server import CREDENTIALS, REGION, reset
from reconciler.errors import LeaseLostError
from reconciler.ports import ExpiredItems, ExpiryWindow, LeaseStore, SweepPosition, SweepPositions
from reconciler.sweeper import segment_id, sweep_arn
from reconciler.testing import FakeExpiredItems, FakeItemStore, FakeLeaseStore, FakeSweepPositions

NOW = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())
INDEXED = "big_transcripts"  # a table with a sparse expiry index
INDEX = ExpiryIndex("by-expiry", "expiry_shard", ("s0", "s1"))
WINDOW = ExpiryWindow("expires_at", NOW - 5 * 365 * 86400, NOW - 900)


@dataclass
class Ports:
    found: ExpiredItems
    positions: SweepPositions
    leases: LeaseStore
    fake_items: FakeItemStore | None
    layout: Layout | None

    async def put(self, transcript: str, ttl: int | str | None) -> None:
        item: dict[str, object] = {"transcript_id": transcript, "account_id": "acct-1", "body": "x" * 50}
        if ttl is not None:
            item["expires_at"] = decimal.Decimal(ttl) if isinstance(ttl, int) else ttl
        if self.fake_items is not None:
            self.fake_items.put("transcripts", item)
            return
        assert self.layout is not None
        await self.layout.dynamodb.put_item(TableName="transcripts", Item=encode_key(item))

    async def put_indexed(self, transcript: str, shard: str | None, ttl: int) -> None:
        item: dict[str, object] = {"transcript_id": transcript, "expires_at": decimal.Decimal(ttl)}
        if shard is not None:  # without it, the item is not in the sparse index
            item["expiry_shard"] = shard
        if self.fake_items is not None:
            self.fake_items.put(INDEXED, item)
            return
        assert self.layout is not None
        await self.layout.dynamodb.put_item(TableName=INDEXED, Item=encode_key(item))

    async def indexed_ids(self, value: str) -> list[str]:
        """The ids a Query of partition ``value`` finds, page by page (one item a page), in order."""
        ids: list[str] = []
        start = None
        while True:
            page = await self.found.query(INDEXED, WINDOW, index=INDEX, value=value, start=start, limit=1)
            assert all(set(item) == {"transcript_id", "expires_at"} for item in page.items)  # never the image
            ids += [str(item["transcript_id"]) for item in page.items]
            if page.start is None:
                return ids
            start = page.start

    async def ids(self, segments: int = 1) -> list[set[str]]:
        found = []
        for segment in range(segments):
            ids: set[str] = set()
            start = None
            while True:
                page = await self.found.scan(
                    "transcripts", WINDOW, segment=segment, segments=segments, start=start, limit=2
                )
                ids |= {str(item["transcript_id"]) for item in page.items}
                if page.start is None:
                    break
                start = page.start
            found.append(ids)
        return found


@pytest.fixture(params=["fake", pytest.param("moto", marks=pytest.mark.integration)])
async def ports(request: pytest.FixtureRequest) -> AsyncIterator[Ports]:
    if request.param == "fake":
        items, leases = FakeItemStore(), FakeLeaseStore()
        found = FakeExpiredItems(items, {"transcripts": ("transcript_id",), INDEXED: ("transcript_id",)})
        yield Ports(found, FakeSweepPositions(leases), leases, items, None)
        return
    endpoint = request.getfixturevalue("endpoint")
    reset(endpoint)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        layout = Layout(clients.s3, clients.dynamodb)
        await create_table(clients.dynamodb, "transcripts", ("transcript_id",), poll_seconds=0.05)
        await create_table(clients.dynamodb, "checkpoints", ("stream_arn", "shard_id"), poll_seconds=0.05)
        await clients.dynamodb.create_table(
            TableName=INDEXED,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "transcript_id", "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": "transcript_id", "AttributeType": "S"},
                {"AttributeName": "expiry_shard", "AttributeType": "S"},
                {"AttributeName": "expires_at", "AttributeType": "N"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": INDEX.name,
                    "KeySchema": [
                        {"AttributeName": "expiry_shard", "KeyType": "HASH"},
                        {"AttributeName": "expires_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
        )
        call = Caller(RetryPolicy(attempts=3))
        yield Ports(
            DynamoDBExpiredItems(clients.dynamodb, call),
            DynamoDBSweepPositions(clients.dynamodb, call, "checkpoints"),
            DynamoDBLeaseStore(clients.dynamodb, call, "checkpoints", "test"),
            None,
            layout,
        )


async def test_the_scan_returns_due_keys_and_ttl_only_and_segments_split_the_table(ports: Ports) -> None:
    for n in range(6):
        await ports.put(f"due-{n}", NOW - 86400)
    await ports.put("grace", NOW - 60)
    await ports.put("live", NOW + 86400)
    await ports.put("none", None)
    await ports.put("text", str(NOW - 86400))  # not a Number: TTL ignores it, so does the sweep
    await ports.put("ancient", NOW - 6 * 365 * 86400)
    assert await ports.ids() == [{f"due-{n}" for n in range(6)}]
    split = await ports.ids(segments=3)
    assert set.union(*split) == {f"due-{n}" for n in range(6)}
    assert sum(len(s) for s in split) == 6  # each item in one segment only
    page = await ports.found.scan("transcripts", WINDOW, segment=0, segments=1, start=None, limit=100)
    assert all(set(item) == {"transcript_id", "expires_at"} for item in page.items)  # never the image
    assert page.read_units > 0


async def test_the_delete_holds_only_while_the_ttl_is_due_and_returns_the_whole_image(ports: Ports) -> None:
    await ports.put("due", NOW - 86400)
    await ports.put("extended", NOW + 86400)
    deleted = await ports.found.enforce("transcripts", {"transcript_id": "due"}, WINDOW)
    assert deleted is not None
    assert (deleted["account_id"], deleted["expires_at"]) == ("acct-1", NOW - 86400)
    assert await ports.found.enforce("transcripts", {"transcript_id": "due"}, WINDOW) is None  # gone
    assert await ports.found.enforce("transcripts", {"transcript_id": "extended"}, WINDOW) is None
    assert await ports.ids() == [set()]
    window = ExpiryWindow(WINDOW.ttl_attribute, WINDOW.after, NOW + 2 * 86400)
    assert await ports.found.enforce("transcripts", {"transcript_id": "extended"}, window) is not None


async def _held(leases: LeaseStore, owner: str = "a") -> Lease:
    stub = Lease(sweep_arn("transcripts"), segment_id(0), "transcripts")
    await leases.create(stub)
    row = await leases.get(*stub.key)
    assert row is not None
    taken = await leases.take(row, owner)
    assert taken is not None
    return taken


async def test_positions_are_kept_with_the_lease_and_never_move_back(ports: Ports) -> None:
    lease = await _held(ports.leases)
    assert await ports.positions.load(lease) is None
    middle = SweepPosition(2, 3, {"transcript_id": "due-3"})
    await ports.positions.save(lease, middle)
    assert await ports.positions.load(lease) == middle
    await ports.positions.save(lease, SweepPosition(2, 1, {"transcript_id": "due-1"}))  # behind: ignored
    await ports.positions.save(lease, SweepPosition(1, 9, None, 5.0))
    assert await ports.positions.load(lease) == middle
    done = SweepPosition(2, 4, None, 1_767_225_600.5, started_at=1_767_225_000.25)
    await ports.positions.save(lease, done)
    assert await ports.positions.load(lease) == done
    renewed = await ports.leases.renew(lease)  # the lease's own writes leave the position alone
    assert renewed is not None
    assert await ports.positions.load(renewed) == done


async def test_a_position_is_not_written_once_the_lease_is_lost(ports: Ports) -> None:
    lease = await _held(ports.leases)
    assert await ports.leases.release(lease)
    row = await ports.leases.get(*lease.key)
    assert row is not None
    assert await ports.leases.take(row, "b") is not None
    with pytest.raises(LeaseLostError):
        await ports.positions.save(lease, SweepPosition(1, 1, {"transcript_id": "x"}))
    assert await ports.positions.load(lease) is None


async def test_the_expiry_index_query_finds_the_due_items_of_one_partition_in_ttl_order(ports: Ports) -> None:
    await ports.put_indexed("late", "s0", NOW - 86400)
    await ports.put_indexed("later", "s0", NOW - 3 * 86400)
    await ports.put_indexed("other-shard", "s1", NOW - 86400)
    await ports.put_indexed("in-grace", "s0", NOW - 60)
    await ports.put_indexed("live", "s0", NOW + 86400)
    await ports.put_indexed("ancient", "s0", NOW - 6 * 365 * 86400)  # TTL ignores it, so does the sweep
    await ports.put_indexed("unindexed", None, NOW - 86400)  # not in the sparse index: left to TTL
    assert await ports.indexed_ids("s0") == ["later", "late"]
    assert await ports.indexed_ids("s1") == ["other-shard"]
    assert await ports.indexed_ids("s9") == []
