"""DynamoDB Streams: find a table's stream, list its shards, read records.

``DescribeStream`` pages with ``ExclusiveStartShardId``; a closed shard has an ``EndingSequenceNumber``; an
iterator expires after 15 minutes; records older than 24 hours are trimmed.
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_streams_GetRecords.html
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, error_code
from reconciler.core.records import StreamViewType
from reconciler.errors import ConfigError, ExpiredIteratorError, TrimmedDataError
from reconciler.ports import RecordsPage, Shard, StreamInfo

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_dynamodbstreams import DynamoDBStreamsClient


async def _mapped(fn: Callable[..., Awaitable[Any]], **kwargs: Any) -> Any:
    try:
        return await fn(**kwargs)
    except ClientError as exc:
        code = error_code(exc)
        if code == "ExpiredIteratorException":
            raise ExpiredIteratorError("shard iterator expired") from exc
        if code == "TrimmedDataAccessException":
            raise TrimmedDataError("records after the checkpoint were trimmed") from exc
        raise


class RateLimit:
    """At most ``per_second`` calls a second from this process, spaced evenly (DescribeStream allows 10 a
    second per account and Region: the shard-sync holder's listing and the children lookups share it)."""

    def __init__(self, per_second: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / per_second
        self._monotonic = monotonic
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            delay = self._next - self._monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next = max(self._next, self._monotonic()) + self._interval


class DynamoDBStreamSource:
    def __init__(
        self,
        dynamodb: DynamoDBClient,
        streams: DynamoDBStreamsClient,
        call: Caller,
        describe_per_second: float = 2.0,
    ) -> None:
        self._dynamodb = dynamodb
        self._streams = streams
        self._call = call
        self._describe_limit = RateLimit(describe_per_second)

    async def describe(self, table: str) -> StreamInfo:
        response = await self._call(self._dynamodb.describe_table, TableName=table)
        description = response["Table"]
        arn = description.get("LatestStreamArn")
        spec = description.get("StreamSpecification", {})
        if not arn or not spec.get("StreamEnabled", False):
            raise ConfigError(f"table {table!r} has no stream enabled")
        view = spec.get("StreamViewType")
        return StreamInfo(table=table, arn=arn, view_type=StreamViewType(view) if view else None)

    async def shards(self, stream_arn: str) -> list[Shard]:
        return await self._describe({"StreamArn": stream_arn})

    async def children(self, shard: Shard) -> list[Shard]:
        found = await self._describe(
            {
                "StreamArn": shard.stream_arn,
                "ShardFilter": {"Type": "CHILD_SHARDS", "ShardId": shard.shard_id},
            }
        )
        # Filtered again here: an endpoint that ignores ShardFilter (moto does) answers with every shard.
        return [child for child in found if child.parent_id == shard.shard_id]

    async def _describe(self, params: dict[str, Any]) -> list[Shard]:
        """Every page of a DescribeStream answer, each call within the rate limit."""
        shards: list[Shard] = []
        while True:
            await self._describe_limit.wait()
            response = await self._call(self._streams.describe_stream, **params)
            description = response["StreamDescription"]
            shards.extend(
                Shard(
                    stream_arn=params["StreamArn"],
                    shard_id=shard["ShardId"],
                    parent_id=shard.get("ParentShardId"),
                    closed="EndingSequenceNumber" in shard.get("SequenceNumberRange", {}),
                )
                for shard in description.get("Shards", [])
            )
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            params = params | {"ExclusiveStartShardId": last}

    async def iterator(self, shard: Shard, after: str | None) -> str:
        params: dict[str, Any] = {"StreamArn": shard.stream_arn, "ShardId": shard.shard_id}
        if after is None:
            params["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            params["SequenceNumber"] = after
        response = await self._call(_mapped, fn=self._streams.get_shard_iterator, **params)
        return str(response["ShardIterator"])

    async def records(self, iterator: str, limit: int) -> RecordsPage:
        response = await self._call(
            _mapped, fn=self._streams.get_records, ShardIterator=iterator, Limit=limit
        )
        return RecordsPage(
            records=list(response.get("Records", [])),
            next_iterator=response.get("NextShardIterator"),
        )
