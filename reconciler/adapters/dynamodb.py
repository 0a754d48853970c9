"""DynamoDB: linked items (Query, GetItem, BatchWriteItem), checkpoints and dead letters.

``BatchWriteItem`` takes at most 25 requests and may hand some back as ``UnprocessedItems``; those are retried
with backoff, never dropped. https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchWriteItem.html
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, error_code
from reconciler.core.dynamodb_json import Image, decode_image, encode_key, encode_value
from reconciler.core.plan import LinkQuery
from reconciler.errors import TransientError
from reconciler.ports import DeadLetter

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

MAX_BATCH_WRITE = 25
_SEQUENCE_WIDTH = 40  # sequence numbers have 21-40 digits; zero-padded they compare as text


class DynamoDBItemStore:
    def __init__(self, client: DynamoDBClient, call: Caller) -> None:
        self._client = client
        self._call = call

    async def find(self, query: LinkQuery, key_attributes: Sequence[str]) -> AsyncIterator[Image]:
        params: dict[str, Any] = {
            "TableName": query.table,
            "KeyConditionExpression": "#k = :v",
            "ExpressionAttributeNames": {"#k": query.attribute},
            "ExpressionAttributeValues": {":v": encode_value(query.value)},
        }
        if query.index:
            params["IndexName"] = query.index
        else:
            params["ConsistentRead"] = True
        while True:
            page = await self._call(self._client.query, **params)
            for raw in page.get("Items", []):
                image: Image = decode_image(raw)
                if query.index:
                    # GSIs are eventually consistent and may project only keys: read the item itself.
                    key = {name: image[name] for name in key_attributes}
                    current = await self.get(query.table, key)
                    if current is None:
                        continue
                    image = current
                yield image
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def get(self, table: str, key: Mapping[str, object]) -> Image | None:
        response = await self._call(
            self._client.get_item, TableName=table, Key=encode_key(key), ConsistentRead=True
        )
        item = response.get("Item")
        return decode_image(item) if item else None

    async def delete(self, table: str, keys: Sequence[Mapping[str, object]]) -> None:
        for start in range(0, len(keys), MAX_BATCH_WRITE):
            pending: dict[str, Any] = {
                table: [
                    {"DeleteRequest": {"Key": encode_key(k)}} for k in keys[start : start + MAX_BATCH_WRITE]
                ]
            }
            await self._call(self._write, pending=pending)

    async def _write(self, *, pending: dict[str, Any]) -> None:
        response = await self._client.batch_write_item(RequestItems=pending)
        unprocessed = response.get("UnprocessedItems") or {}
        pending.clear()
        pending.update(unprocessed)
        if pending:
            raise TransientError("BatchWriteItem returned unprocessed items")


def _padded(sequence_number: str) -> str:
    return sequence_number.zfill(_SEQUENCE_WIDTH)


class DynamoDBCheckpointStore:
    """Checkpoints keyed by stream ARN + shard id (shard ids repeat across streams)."""

    def __init__(self, client: DynamoDBClient, call: Caller, table: str, owner: str) -> None:
        self._client = client
        self._call = call
        self._table = table
        self._owner = owner

    async def get(self, stream_arn: str, shard_id: str) -> str | None:
        response = await self._call(
            self._client.get_item,
            TableName=self._table,
            Key={"stream_arn": {"S": stream_arn}, "shard_id": {"S": shard_id}},
            ConsistentRead=True,
        )
        item = response.get("Item", {})
        return item["checkpoint"]["S"] if "checkpoint" in item else None

    async def put(self, stream_arn: str, shard_id: str, position: str) -> None:
        ordered = "~" if not position.isdigit() else _padded(position)  # SHARD_END sorts after every number
        await self._call(
            self._update,
            TableName=self._table,
            Key={"stream_arn": {"S": stream_arn}, "shard_id": {"S": shard_id}},
            UpdateExpression="SET checkpoint = :c, checkpoint_order = :o, updated_at = :t, updated_by = :w",
            ConditionExpression="attribute_not_exists(checkpoint_order) OR checkpoint_order <= :o",
            ExpressionAttributeValues={
                ":c": {"S": position},
                ":o": {"S": ordered},
                ":t": {"S": dt.datetime.now(dt.UTC).isoformat()},
                ":w": {"S": self._owner},
            },
        )

    async def _update(self, **kwargs: Any) -> None:
        try:
            await self._client.update_item(**kwargs)
        except ClientError as exc:
            # A checkpoint further on is already stored (a redelivered batch): never move it backwards.
            if error_code(exc) != "ConditionalCheckFailedException":
                raise


class DynamoDBDeadLetterStore:
    def __init__(self, client: DynamoDBClient, call: Caller, table: str) -> None:
        self._client = client
        self._call = call
        self._table = table

    async def put(self, letter: DeadLetter) -> None:
        item: dict[str, Any] = {
            "letter_id": {"S": letter.letter_id},
            "source_table": {"S": letter.source_table},
            "stream_arn": {"S": letter.stream_arn},
            "shard_id": {"S": letter.shard_id},
            "sequence_number": {"S": letter.sequence_number},
            "event_id": {"S": letter.event_id or "-"},
            "kind": {"S": letter.kind},
            "reason": {"S": letter.reason},
            "created_at": {"S": letter.created_at.isoformat()},
        }
        if letter.cause:
            item["cause"] = {"S": letter.cause}
        if letter.item_table:
            item["item_table"] = {"S": letter.item_table}
        if letter.item_key:
            item["item_key"] = {"M": encode_key(letter.item_key)}
        if letter.targets:
            item["targets"] = {"L": [{"S": t} for t in letter.targets]}
        await self._call(self._client.put_item, TableName=self._table, Item=item)
