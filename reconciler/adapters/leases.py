"""The lease table on DynamoDB: one item per stream ARN + shard id, every write conditional.

Each item holds the shard's source table, parent shard ids, owner, lease token and counter, an informational
expiry, and the checkpoint (with a zero-padded copy that compares as text). The reused checkpoint table keeps
its key, so rows written before leases existed are read as free leases with their checkpoint.
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, error_code
from reconciler.adapters.tables import CHECKPOINTS
from reconciler.core.leases import SHARD_END, Lease
from reconciler.errors import LeaseLostError

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

# Every replica reads a stream's whole partition of the lease table each heartbeat, ended rows included, so
# they are kept no longer than safety needs: past the 24 h a closed shard stays listed by DescribeStream (a
# lister must not take a listed shard without a row for a new one), with a day's margin.
FINISHED_SHARD_RETENTION = dt.timedelta(days=2)
_SEQUENCE_WIDTH = 40  # sequence numbers have 21-40 digits; zero-padded they compare as text
_CONFLICT = "ConditionalCheckFailedException"


def ordered(position: str) -> str:
    """A checkpoint as text that sorts like the numbers; SHARD_END after every sequence number."""
    return "~" if not position.isdigit() else position.zfill(_SEQUENCE_WIDTH)


class DynamoDBLeaseStore:
    def __init__(
        self,
        client: DynamoDBClient,
        call: Caller,
        table: str,
        owner: str,
        *,
        lease_seconds: float = 30.0,
    ) -> None:
        self._client = client
        self._call = call
        self._table = table
        self._owner = owner
        self._lease = dt.timedelta(seconds=lease_seconds)

    async def create(self, lease: Lease) -> bool:
        item: dict[str, Any] = {
            **_key(lease.stream_arn, lease.shard_id),
            "source_table": {"S": lease.table},
            "lease_counter": {"N": "0"},
            "lease_state": {"S": "open"},
            "created_at": {"S": _now().isoformat()},
        }
        if lease.parents:
            item["parent_shard_ids"] = {"L": [{"S": p} for p in lease.parents]}
        return await self._call(
            self._conditional,
            fn=self._client.put_item,
            TableName=self._table,
            Item=item,
            ConditionExpression="attribute_not_exists(shard_id)",
        )

    async def leases(self, stream_arn: str) -> list[Lease]:
        params: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "stream_arn = :a",
            "ExpressionAttributeValues": {":a": {"S": stream_arn}},
            "ConsistentRead": True,
        }
        found: list[Lease] = []
        while True:
            page = await self._call(self._client.query, **params)
            found.extend(_lease(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return found
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def get(self, stream_arn: str, shard_id: str) -> Lease | None:
        response = await self._call(
            self._client.get_item, TableName=self._table, Key=_key(stream_arn, shard_id), ConsistentRead=True
        )
        item = response.get("Item")
        return _lease(item) if item else None

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        # Counter 0 is also a row from before leases (no counter at all): both mean "never taken".
        unchanged = "lease_counter = :c"
        if lease.counter == 0:
            unchanged = f"(attribute_not_exists(lease_counter) OR {unchanged})"
        token = uuid.uuid4().hex  # one per take, kept by its retries
        taken = await self._update(
            lease,
            "SET lease_owner = :o, lease_token = :t, lease_counter = :n, lease_expires_at = :x,"
            " updated_at = :u, updated_by = :o",
            f"attribute_exists(shard_id) AND {unchanged}",
            {
                ":o": {"S": owner},
                ":t": {"S": token},
                ":c": {"N": str(lease.counter)},
                ":n": {"N": str(lease.counter + 1)},
            },
        )
        if taken is not None:
            return taken
        # The condition failed: a peer moved first, or an earlier attempt of this take ran and its answer
        # was lost (the retry then finds the counter it moved itself). Only the latter leaves our token.
        row = await self.get(lease.stream_arn, lease.shard_id)
        if row is None or row.token != token:
            return None
        return dataclasses.replace(row, table=row.table or lease.table)

    async def renew(self, lease: Lease) -> Lease | None:
        return await self._update(
            lease,
            "SET lease_counter = lease_counter + :one, lease_expires_at = :x, updated_at = :u",
            "lease_token = :t",
            {":t": {"S": lease.token or "-"}, ":one": {"N": "1"}},
        )

    async def checkpoint(self, lease: Lease, position: str) -> None:
        now = _now()
        update = "SET checkpoint = :c, checkpoint_order = :o, updated_at = :u, updated_by = :w"
        values: dict[str, Any] = {
            ":c": {"S": position},
            ":o": {"S": ordered(position)},
            ":u": {"S": now.isoformat()},
            ":w": {"S": self._owner},
            ":t": {"S": lease.token or "-"},
        }
        if position == SHARD_END:
            # Nothing is left to read, so the lease is given up with it. DescribeStream lists a closed shard
            # only until its records age out (24 h); DynamoDB's TTL then removes the row (see
            # FINISHED_SHARD_RETENTION) instead of the table growing.
            update += (
                f", lease_state = :s, {CHECKPOINTS.ttl_attribute} = :e, lease_counter = lease_counter + :one"
                " REMOVE lease_owner, lease_token"
            )
            values |= {
                ":s": {"S": "ended"},
                ":e": {"N": str(int((now + FINISHED_SHARD_RETENTION).timestamp()))},
                ":one": {"N": "1"},
            }
        written = await self._call(
            self._conditional,
            fn=self._client.update_item,
            TableName=self._table,
            Key=_key(lease.stream_arn, lease.shard_id),
            UpdateExpression=update,
            ConditionExpression=(
                "lease_token = :t AND (attribute_not_exists(checkpoint_order) OR checkpoint_order <= :o)"
            ),
            ExpressionAttributeValues=values,
        )
        if not written:
            held = await self.get(lease.stream_arn, lease.shard_id)
            if position == SHARD_END and held is not None and held.ended:
                return  # SHARD_END gives the lease up: a retry after a lost answer finds it ended, no token
            if held is None or held.token != lease.token:
                raise LeaseLostError(f"the lease of shard {lease.shard_id} is held by another worker")
            # Still ours, and a checkpoint further on is stored (a redelivered record): never move it back.

    async def release(self, lease: Lease) -> bool:
        return await self._call(
            self._conditional,
            fn=self._client.update_item,
            TableName=self._table,
            Key=_key(lease.stream_arn, lease.shard_id),
            UpdateExpression="SET lease_counter = lease_counter + :one REMOVE lease_owner, lease_token",
            ConditionExpression="lease_token = :t",
            ExpressionAttributeValues={":t": {"S": lease.token or "-"}, ":one": {"N": "1"}},
        )

    async def _update(
        self, lease: Lease, update: str, condition: str, values: dict[str, Any]
    ) -> Lease | None:
        now = _now()
        values = values | {":x": {"S": (now + self._lease).isoformat()}, ":u": {"S": now.isoformat()}}
        response = await self._call(
            self._attempt,
            fn=self._client.update_item,
            TableName=self._table,
            Key=_key(lease.stream_arn, lease.shard_id),
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        return None if response is None else _lease(response["Attributes"], default_table=lease.table)

    async def _conditional(self, *, fn: Any, **kwargs: Any) -> bool:
        """True if the write happened, False if its condition did not hold."""
        return await self._attempt(fn=fn, **kwargs) is not None

    @staticmethod
    async def _attempt(*, fn: Any, **kwargs: Any) -> Any:
        """The answer of a conditional write, or None if its condition did not hold (inside the retried
        call: a lost race is an answer, not an error to retry or translate)."""
        try:
            return await fn(**kwargs)
        except ClientError as exc:
            if error_code(exc) == _CONFLICT:
                return None
            raise


def _key(stream_arn: str, shard_id: str) -> dict[str, Any]:
    return {"stream_arn": {"S": stream_arn}, "shard_id": {"S": shard_id}}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _lease(item: Mapping[str, Any], default_table: str = "") -> Lease:
    def text(name: str) -> str | None:
        value = item.get(name)
        return str(value["S"]) if value else None

    parents = tuple(str(p["S"]) for p in item.get("parent_shard_ids", {}).get("L", []))
    return Lease(
        stream_arn=str(item["stream_arn"]["S"]),
        shard_id=str(item["shard_id"]["S"]),
        table=text("source_table") or default_table,
        parents=parents,
        owner=text("lease_owner"),
        token=text("lease_token"),
        counter=int(item.get("lease_counter", {}).get("N", "0")),
        checkpoint=text("checkpoint"),
    )
