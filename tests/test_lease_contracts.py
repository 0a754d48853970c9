"""The lease store's contract, run against the in-memory fake and the DynamoDB adapter on moto's server.

Every write is conditional: a take needs the counter it read, a renewal, checkpoint or release the token of
its take. These are the promises the coordinator and the consumers build on; a fake that kept fewer of them
would let the lease tests prove things about a table that does not exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.leases import DynamoDBLeaseStore
from reconciler.adapters.tables import create_worker_tables
from reconciler.core.leases import SHARD_END, Lease
from reconciler.demo.moto_server import CREDENTIALS, REGION, reset
from reconciler.errors import LeaseLostError
from reconciler.ports import LeaseStore
from reconciler.testing import FakeLeaseStore

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/transcripts/stream/2026-01-01T00:00:00.000"
OTHER_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/other/stream/2026-01-01T00:00:00.000"


@dataclass
class Table:
    leases: LeaseStore
    legacy: object  # writes a checkpoint row as the worker did before leases existed

    async def seed_legacy(self, shard_id: str, checkpoint: str) -> None:
        if isinstance(self.legacy, FakeLeaseStore):
            self.legacy.positions[ARN, shard_id] = checkpoint
            return
        await self.legacy.put_item(  # type: ignore[attr-defined]
            TableName="checkpoints",
            Item={"stream_arn": {"S": ARN}, "shard_id": {"S": shard_id}, "checkpoint": {"S": checkpoint}},
        )


@pytest.fixture(params=["fake", pytest.param("moto", marks=pytest.mark.integration)])
async def table(request: pytest.FixtureRequest) -> AsyncIterator[Table]:
    if request.param == "fake":
        fake = FakeLeaseStore()
        yield Table(fake, fake)
        return
    endpoint = request.getfixturevalue("endpoint")
    reset(endpoint)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        await create_worker_tables(clients.dynamodb, "checkpoints", "letters")
        yield Table(
            DynamoDBLeaseStore(clients.dynamodb, Caller(RetryPolicy(attempts=3)), "checkpoints", "w"),
            clients.dynamodb,
        )


def _seq(n: int) -> str:
    return f"{n:021d}"


async def _taken(leases: LeaseStore, shard_id: str = "shardId-1", owner: str = "a") -> Lease:
    await leases.create(Lease(ARN, shard_id, "transcripts"))
    row = await leases.get(ARN, shard_id)
    assert row is not None
    taken = await leases.take(row, owner)
    assert taken is not None
    return taken


async def test_a_lease_is_created_once_with_its_parents_and_listed_per_stream(table: Table) -> None:
    leases = table.leases
    assert await leases.create(Lease(ARN, "shardId-2", "transcripts", parents=("shardId-1",)))
    assert not await leases.create(Lease(ARN, "shardId-2", "transcripts"))  # a second lister loses
    assert await leases.create(Lease(OTHER_ARN, "shardId-2", "other"))  # shard ids repeat across streams
    [row] = await leases.leases(ARN)
    assert (row.shard_id, row.table, row.parents, row.owner, row.counter, row.checkpoint) == (
        "shardId-2", "transcripts", ("shardId-1",), None, 0, None,
    )  # fmt: skip
    assert await leases.get(ARN, "shardId-9") is None


async def test_of_two_workers_taking_the_same_read_of_a_lease_only_one_wins(table: Table) -> None:
    leases = table.leases
    await leases.create(Lease(ARN, "shardId-1", "transcripts"))
    row = await leases.get(ARN, "shardId-1")
    assert row is not None
    first = await leases.take(row, "a")
    second = await leases.take(row, "b")  # read before the first take: its counter is stale
    assert first is not None
    assert second is None
    assert (first.owner, first.counter) == ("a", 1)
    assert first.token
    stolen = await leases.take(first, "b")  # taking from a holder needs its current counter
    assert stolen is not None
    assert stolen.token != first.token
    assert stolen.owner == "b"


async def test_a_renewal_moves_the_counter_only_for_the_holder(table: Table) -> None:
    leases = table.leases
    held = await _taken(leases)
    renewed = await leases.renew(held)
    assert renewed is not None
    assert (renewed.counter, renewed.token) == (held.counter + 1, held.token)
    thief = await leases.take(renewed, "b")
    assert thief is not None
    assert await leases.renew(held) is None  # lost: the heartbeat says so, it does not raise


async def test_a_checkpoint_never_moves_backwards_and_shard_end_is_final(table: Table) -> None:
    leases = table.leases
    held = await _taken(leases)
    await leases.checkpoint(held, _seq(200))
    await leases.checkpoint(held, _seq(100))  # a redelivered record finishing late
    assert (await leases.get(ARN, "shardId-1")).checkpoint == _seq(200)  # type: ignore[union-attr]
    await leases.checkpoint(held, "9" * 39)  # longer sequence numbers are larger, whatever their text says
    assert (await leases.get(ARN, "shardId-1")).checkpoint == "9" * 39  # type: ignore[union-attr]
    await leases.checkpoint(held, SHARD_END)
    ended = await leases.get(ARN, "shardId-1")
    assert ended is not None
    assert ended.ended
    assert ended.owner is None  # nothing left to read: the lease is given up with it


async def test_a_checkpoint_under_a_lost_lease_raises_and_writes_nothing(table: Table) -> None:
    leases = table.leases
    held = await _taken(leases)
    await leases.checkpoint(held, _seq(5))
    thief = await leases.take(held, "b")
    assert thief is not None
    with pytest.raises(LeaseLostError):
        await leases.checkpoint(held, _seq(9))
    with pytest.raises(LeaseLostError):
        await leases.checkpoint(held, SHARD_END)
    row = await leases.get(ARN, "shardId-1")
    assert row is not None
    assert (row.checkpoint, row.owner) == (_seq(5), "b")


async def test_a_released_lease_is_free_for_a_peer_at_once(table: Table) -> None:
    leases = table.leases
    held = await _taken(leases)
    await leases.checkpoint(held, _seq(3))
    assert await leases.release(held)
    assert not await leases.release(held)  # the token went with it
    row = await leases.get(ARN, "shardId-1")
    assert row is not None
    assert (row.owner, row.token, row.checkpoint) == (None, None, _seq(3))
    assert row.counter > held.counter  # peers watching the counter see the change
    peer = await leases.take(row, "b")
    assert peer is not None
    assert peer.checkpoint == _seq(3)


async def test_a_checkpoint_row_from_before_leases_is_a_free_lease_with_its_checkpoint(table: Table) -> None:
    await table.seed_legacy("shardId-7", _seq(42))
    [row] = await table.leases.leases(ARN)
    assert (row.owner, row.counter, row.checkpoint) == (None, 0, _seq(42))
    taken = await table.leases.take(dataclasses.replace(row, table="transcripts"), "a")
    assert taken is not None
    assert (taken.checkpoint, taken.table) == (_seq(42), "transcripts")  # the taker names the table
