"""The worker's own tables: their key schemas as data, and creation on request for local and test use.

``WORKER_TABLES`` is the one description of these tables: ``create_worker_tables`` (``--create-tables``,
``reconciler init-tables``) builds them from it, and a test checks that the CloudFormation template
``deploy/aws/tables.cfn.yaml``, which production uses, declares the same keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, RetryPolicy, aws_operation, error_code
from reconciler.errors import TransientError

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_dynamodb.type_defs import (
        AttributeDefinitionTypeDef,
        KeySchemaElementTypeDef,
    )


@dataclass(frozen=True, slots=True)
class TableKeys:
    """String key attributes of a table: partition[, sort]; and its TTL attribute, if its items expire."""

    attributes: tuple[str, ...]
    ttl_attribute: str | None = None

    def key_schema(self) -> list[KeySchemaElementTypeDef]:
        schema: list[KeySchemaElementTypeDef] = [{"AttributeName": self.attributes[0], "KeyType": "HASH"}]
        return schema + [{"AttributeName": name, "KeyType": "RANGE"} for name in self.attributes[1:]]

    def attribute_definitions(self) -> list[AttributeDefinitionTypeDef]:
        return [{"AttributeName": name, "AttributeType": "S"} for name in self.attributes]


# Shard ids repeat across streams. A finished shard's row (SHARD_END) expires: see CheckpointStore.put.
CHECKPOINTS = TableKeys(("stream_arn", "shard_id"), ttl_attribute="expires_at")
DEAD_LETTERS = TableKeys(("letter_id",))
# One receipt per deleted item; each expires after the retention setting (adapters/receipts.py).
RECEIPTS = TableKeys(("source_table", "key_hash"), ttl_attribute="retain_until")
WORKER_TABLES = {
    "checkpoint_table": CHECKPOINTS,
    "dead_letter_table": DEAD_LETTERS,
    "receipt_table": RECEIPTS,
}
"""The worker's tables by the ``Settings`` field that names them."""
ACTIVE_WITHIN_SECONDS = 120.0


async def create_table(
    client: DynamoDBClient,
    name: str,
    keys: tuple[str, ...],
    ttl_attribute: str | None = None,
    *,
    call: Caller | None = None,
    poll_seconds: float = 1.0,
) -> bool:
    """Create an on-demand table with string keys (partition[, sort]) and wait until it is ACTIVE; False if
    it already existed. Every call goes through the retry policy: a throttle at start is waited out, never a
    traceback (botocore's waiter would give up on the first throttled DescribeTable)."""
    call = call or Caller(RetryPolicy())
    table = TableKeys(keys, ttl_attribute)
    created = await call(
        _create_if_absent,
        fn=client.create_table,
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=table.key_schema(),
        AttributeDefinitions=table.attribute_definitions(),
    )
    await _until_active(client, name, call, poll_seconds)  # created just now, here or by another replica
    if created and ttl_attribute is not None:
        await call(
            client.update_time_to_live,
            TableName=name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute},
        )
    return bool(created)


@aws_operation("create_table")
async def _create_if_absent(*, fn: Callable[..., Awaitable[object]], **kwargs: Any) -> bool:
    try:
        await fn(**kwargs)
    except ClientError as exc:
        if error_code(exc) == "ResourceInUseException":
            return False
        raise
    return True


async def _until_active(client: DynamoDBClient, name: str, call: Caller, poll_seconds: float) -> None:
    deadline = time.monotonic() + ACTIVE_WITHIN_SECONDS
    while True:
        described = await call(client.describe_table, TableName=name)
        if described["Table"].get("TableStatus") == "ACTIVE":
            return
        if time.monotonic() > deadline:
            raise TransientError(f"table {name} is not ACTIVE after {ACTIVE_WITHIN_SECONDS:.0f}s")
        await asyncio.sleep(poll_seconds)


async def create_worker_tables(
    client: DynamoDBClient,
    checkpoints: str,
    dead_letters: str,
    call: Caller | None = None,
    *,
    receipts: str | None = None,
) -> dict[str, bool]:
    """Create the worker's tables that are missing (the receipts table when named); by table name, whether
    it was created now."""
    names = {checkpoints: CHECKPOINTS, dead_letters: DEAD_LETTERS}
    if receipts is not None:
        names[receipts] = RECEIPTS
    return {
        name: await create_table(client, name, keys.attributes, keys.ttl_attribute, call=call)
        for name, keys in names.items()
    }
