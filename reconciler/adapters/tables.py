"""The worker's own tables: their key schemas as data, and creation on request for local and test use.

``WORKER_TABLES`` is the one description of these tables: ``create_worker_tables`` (``--create-tables``,
``reconciler init-tables``) builds them from it, adding an index a table made by an earlier release lacks,
and a test checks that the CloudFormation template ``deploy/aws/tables.cfn.yaml``, which production uses,
declares the same keys and indexes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import structlog
from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, RetryPolicy, aws_operation, error_code
from reconciler.errors import TransientError

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_dynamodb.type_defs import (
        AttributeDefinitionTypeDef,
        GlobalSecondaryIndexTypeDef,
        KeySchemaElementTypeDef,
    )

log = structlog.get_logger("reconciler.tables")


def _key_schema(attributes: tuple[str, ...]) -> list[KeySchemaElementTypeDef]:
    schema: list[KeySchemaElementTypeDef] = [{"AttributeName": attributes[0], "KeyType": "HASH"}]
    return schema + [{"AttributeName": name, "KeyType": "RANGE"} for name in attributes[1:]]


@dataclass(frozen=True, slots=True)
class Index:
    """A global secondary index with string keys (partition[, sort])."""

    name: str
    attributes: tuple[str, ...]
    projection: Literal["ALL", "KEYS_ONLY"] = "ALL"

    def definition(self) -> GlobalSecondaryIndexTypeDef:
        return {
            "IndexName": self.name,
            "KeySchema": _key_schema(self.attributes),
            "Projection": {"ProjectionType": self.projection},
        }


@dataclass(frozen=True, slots=True)
class TableKeys:
    """String key attributes of a table: partition[, sort]; its TTL attribute, if its items expire; and its
    global secondary indexes."""

    attributes: tuple[str, ...]
    ttl_attribute: str | None = None
    indexes: tuple[Index, ...] = ()

    def key_schema(self) -> list[KeySchemaElementTypeDef]:
        return _key_schema(self.attributes)

    def attribute_definitions(self) -> list[AttributeDefinitionTypeDef]:
        names = dict.fromkeys((*self.attributes, *(a for i in self.indexes for a in i.attributes)))
        return [{"AttributeName": name, "AttributeType": "S"} for name in names]


# Shard ids repeat across streams. A finished shard's row (SHARD_END) expires: see CheckpointStore.put.
CHECKPOINTS = TableKeys(("stream_arn", "shard_id"), ttl_attribute="expires_at")
# Letters by kind and status ("failed#pending"), oldest first: listed, counted and redriven without a scan,
# and a pending count or a redrive reads only pending letters (reconciler/adapters/dynamodb.py).
LETTERS_INDEX = Index("by-kind-status", ("kind_status", "created_key"))
DEAD_LETTERS = TableKeys(("letter_id",), indexes=(LETTERS_INDEX,))
WORKER_TABLES = {"checkpoint_table": CHECKPOINTS, "dead_letter_table": DEAD_LETTERS}
"""The worker's tables by the ``Settings`` field that names them."""
ACTIVE_WITHIN_SECONDS = 120.0
INDEX_ACTIVE_WITHIN_SECONDS = 1800.0  # an index added to a table with items is backfilled first


async def create_table(
    client: DynamoDBClient,
    name: str,
    keys: tuple[str, ...],
    ttl_attribute: str | None = None,
    *,
    indexes: tuple[Index, ...] = (),
    call: Caller | None = None,
    poll_seconds: float = 1.0,
) -> bool:
    """Create an on-demand table with string keys (partition[, sort]) and its indexes, and wait until it and
    they are ACTIVE; False if it already existed (then an index it lacks is added). Every call goes through
    the retry policy: a throttle at start is waited out, never a traceback (botocore's waiter would give up
    on the first throttled DescribeTable)."""
    call = call or Caller(RetryPolicy())
    table = TableKeys(keys, ttl_attribute, indexes)
    created = await call(
        _create_if_absent,
        fn=client.create_table,
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=table.key_schema(),
        AttributeDefinitions=table.attribute_definitions(),
        **({"GlobalSecondaryIndexes": [i.definition() for i in indexes]} if indexes else {}),
    )
    present = await _until_active(client, name, call, poll_seconds)  # created here or by another replica
    for index in indexes:
        if index.name not in present:
            await _add_index(client, name, table, index, call, poll_seconds)
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


async def _add_index(  # noqa: PLR0917 - the table's context, passed through
    client: DynamoDBClient, name: str, table: TableKeys, index: Index, call: Caller, poll_seconds: float
) -> None:
    """``UpdateTable`` creating one index (DynamoDB takes one index creation per call), then wait until it
    is ACTIVE: DynamoDB backfills it from the items already there.
    https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/GSI.OnlineOps.html"""
    log.info("table.index_adding", table=name, index=index.name)
    await call(
        client.update_table,
        TableName=name,
        AttributeDefinitions=table.attribute_definitions(),
        GlobalSecondaryIndexUpdates=[{"Create": index.definition()}],
    )
    await _until_active(client, name, call, poll_seconds, within=INDEX_ACTIVE_WITHIN_SECONDS)


async def _until_active(
    client: DynamoDBClient,
    name: str,
    call: Caller,
    poll_seconds: float,
    within: float = ACTIVE_WITHIN_SECONDS,
) -> set[str]:
    """Wait until the table and every index it has are ACTIVE; the names of those indexes."""
    deadline = time.monotonic() + within
    while True:
        described = (await call(client.describe_table, TableName=name))["Table"]
        indexes = described.get("GlobalSecondaryIndexes", [])
        if described.get("TableStatus") == "ACTIVE" and all(
            i.get("IndexStatus", "ACTIVE") == "ACTIVE" for i in indexes
        ):
            return {i["IndexName"] for i in indexes if "IndexName" in i}
        if time.monotonic() > deadline:
            raise TransientError(f"table {name} and its indexes are not ACTIVE after {within:.0f}s")
        await asyncio.sleep(poll_seconds)


async def create_worker_tables(
    client: DynamoDBClient, checkpoints: str, dead_letters: str, call: Caller | None = None
) -> dict[str, bool]:
    """Create the worker's tables that are missing (and indexes an existing one lacks); by table name,
    whether it was created now."""
    names = {checkpoints: CHECKPOINTS, dead_letters: DEAD_LETTERS}
    return {
        name: await create_table(
            client, name, keys.attributes, keys.ttl_attribute, indexes=keys.indexes, call=call
        )
        for name, keys in names.items()
    }
