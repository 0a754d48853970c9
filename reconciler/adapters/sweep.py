"""The expiry sweeper's DynamoDB calls: a parallel Scan for due items, their conditional deletes, and the
sweep positions stored on the segment leases.

The Scan reads keys and the TTL only (``ProjectionExpression``); a ``FilterExpression`` drops items that are
not due, but DynamoDB charges the read of every item it evaluates, filtered or not
(https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Scan.html#Scan.FilterExpression).
``ReturnConsumedCapacity=TOTAL`` reports that cost, which the sweeper's read budget charges.

The delete holds only while the TTL is still due (``ConditionExpression``), so a TTL extended after the
Scan wins and the item stays; ``ReturnValues=ALL_OLD`` hands back the image it deleted.

A sweep position is kept on the segment's lease row (``sweep_*`` attributes beside the lease's own), written
under the lease token and ordered by (pass, page): the lease checkpoint itself is ordered as a stream
sequence number (``leases.ordered``) and cannot hold a Scan's ``LastEvaluatedKey``.
"""

from __future__ import annotations

import decimal
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, error_code
from reconciler.adapters.dynamodb import read_page
from reconciler.core.dynamodb_json import Image, decode_image, encode_key, encode_value
from reconciler.core.leases import Lease
from reconciler.core.spec import ExpiryIndex
from reconciler.errors import LeaseLostError
from reconciler.ports import CandidatePage, ExpiryWindow, SweepPosition

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

_CONFLICT = "ConditionalCheckFailedException"
# A Number in range. DynamoDB compares another type as false anyway; the explicit type test says so, and keeps
# moto (which raises on comparing text with a number) answering.
_DUE = "attribute_type(#ttl, :number) AND #ttl >= :after AND #ttl < :before"


def _window_values(window: ExpiryWindow) -> dict[str, Any]:
    return {
        ":number": {"S": "N"},
        ":after": {"N": str(window.after)},
        ":before": {"N": str(window.before)},
    }


class DynamoDBExpiredItems:
    def __init__(self, client: DynamoDBClient, call: Caller) -> None:
        self._client = client
        self._call = call
        self._keys: dict[str, tuple[str, ...]] = {}

    async def key_attributes(self, table: str) -> tuple[str, ...]:
        """The table's key attributes (DescribeTable, once per table)."""
        if table not in self._keys:
            described = await self._call(self._client.describe_table, TableName=table)
            schema = described["Table"]["KeySchema"]
            self._keys[table] = tuple(str(k["AttributeName"]) for k in schema)
        return self._keys[table]

    async def scan(
        self,
        table: str,
        window: ExpiryWindow,
        *,
        segment: int,
        segments: int,
        start: Image | None,
        limit: int,
    ) -> CandidatePage:
        keys = await self.key_attributes(table)
        names = {f"#k{n}": name for n, name in enumerate(keys)} | {"#ttl": window.ttl_attribute}
        params: dict[str, Any] = {
            "TableName": table,
            "Segment": segment,
            "TotalSegments": segments,
            "Limit": limit,
            "FilterExpression": _DUE,
            "ProjectionExpression": ", ".join(names),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": _window_values(window),
            "ReturnConsumedCapacity": "TOTAL",
        }
        return await read_page(self._call, self._client.scan, params, start)

    async def query(
        self,
        table: str,
        window: ExpiryWindow,
        *,
        index: ExpiryIndex,
        value: str | int,
        start: Image | None,
        limit: int,
    ) -> CandidatePage:
        """One page of the sparse index's partition ``value``: the items whose TTL (its sort key) is due.
        A Query is charged for what it reads, so only due items cost read units.
        https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Query.html"""
        keys = await self.key_attributes(table)
        names = {f"#k{n}": name for n, name in enumerate(keys)} | {"#ttl": window.ttl_attribute}
        params: dict[str, Any] = {
            "TableName": table,
            "IndexName": index.name,
            "Limit": limit,
            "KeyConditionExpression": "#part = :part AND #ttl BETWEEN :after AND :last",
            "ProjectionExpression": ", ".join(names),
            "ExpressionAttributeNames": names | {"#part": index.partition_attribute},
            "ExpressionAttributeValues": {
                ":part": encode_value(value),
                ":after": {"N": str(window.after)},
                ":last": {"N": str(window.before - 1)},  # epoch seconds: before the window's end
            },
            "ReturnConsumedCapacity": "TOTAL",
        }
        return await read_page(self._call, self._client.query, params, start)

    async def enforce(self, table: str, key: Image, window: ExpiryWindow) -> Image | None:
        async def attempt() -> Any:
            try:
                return await self._client.delete_item(
                    TableName=table,
                    Key=encode_key(key),
                    ConditionExpression=_DUE,
                    ExpressionAttributeNames={"#ttl": window.ttl_attribute},
                    ExpressionAttributeValues=_window_values(window),
                    ReturnValues="ALL_OLD",
                )
            except ClientError as exc:
                if error_code(exc) == _CONFLICT:
                    return None  # the TTL was extended, or the item is gone: an answer, not an error
                raise

        response = await self._call(attempt)
        if response is None or not response.get("Attributes"):
            return None
        return decode_image(response["Attributes"])


class DynamoDBSweepPositions:
    """Sweep positions on the lease rows of the checkpoint table."""

    def __init__(self, client: DynamoDBClient, call: Caller, table: str) -> None:
        self._client = client
        self._call = call
        self._table = table

    async def load(self, lease: Lease) -> SweepPosition | None:
        response = await self._call(
            self._client.get_item, TableName=self._table, Key=_key(lease), ConsistentRead=True
        )
        item = response.get("Item") or {}
        if "sweep_pass" not in item:
            return None
        start = item.get("sweep_start")
        finished = item.get("sweep_finished_at")
        started = item.get("sweep_started_at")
        return SweepPosition(
            number=int(item["sweep_pass"]["N"]),
            page=int(item["sweep_page"]["N"]),
            start=decode_image(start["M"]) if start else None,
            finished_at=float(decimal.Decimal(finished["N"])) if finished else None,
            started_at=float(decimal.Decimal(started["N"])) if started else None,
        )

    async def save(self, lease: Lease, position: SweepPosition) -> None:
        values: dict[str, Any] = {
            ":t": {"S": lease.token or "-"},
            ":p": {"N": str(position.number)},
            ":n": {"N": str(position.page)},
        }
        sets = ["sweep_pass = :p", "sweep_page = :n"]
        removes = []
        for name, placeholder, value in (
            ("sweep_start", ":s", {"M": encode_key(position.start)} if position.start else None),
            ("sweep_finished_at", ":f", {"N": repr(position.finished_at)} if position.finished_at else None),
            ("sweep_started_at", ":b", {"N": repr(position.started_at)} if position.started_at else None),
        ):
            if value is None:
                removes.append(name)
            else:
                sets.append(f"{name} = {placeholder}")
                values[placeholder] = value
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        if not await self._call(self._write, update=update, values=values, lease=lease):
            held = await self._call(
                self._client.get_item, TableName=self._table, Key=_key(lease), ConsistentRead=True
            )
            token = held.get("Item", {}).get("lease_token", {}).get("S")
            if token is None or token != lease.token:
                raise LeaseLostError(f"the sweep lease of segment {lease.shard_id} is held by another worker")
            # Still ours, and a position further on is stored: never move it back.

    async def _write(self, *, update: str, values: dict[str, Any], lease: Lease) -> bool:
        try:
            await self._client.update_item(
                TableName=self._table,
                Key=_key(lease),
                UpdateExpression=update,
                ConditionExpression=(
                    "lease_token = :t AND (attribute_not_exists(sweep_pass) OR sweep_pass < :p"
                    " OR (sweep_pass = :p AND sweep_page <= :n))"
                ),
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if error_code(exc) == _CONFLICT:
                return False
            raise
        return True


def _key(lease: Lease) -> dict[str, Any]:
    return {"stream_arn": {"S": lease.stream_arn}, "shard_id": {"S": lease.shard_id}}
