"""The worker's own tables: their key schemas as data, and creation on request for local and test use.

``WORKER_TABLES`` is the one description of these tables: ``create_worker_tables`` (``--create-tables``,
``reconciler init-tables``) builds them from it, and a test checks that the CloudFormation template
``deploy/aws/tables.cfn.yaml``, which production uses, declares the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from reconciler.adapters.aws import error_code

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
WORKER_TABLES = {"checkpoint_table": CHECKPOINTS, "dead_letter_table": DEAD_LETTERS}
"""The worker's tables by the ``Settings`` field that names them."""


async def create_table(
    client: DynamoDBClient, name: str, keys: tuple[str, ...], ttl_attribute: str | None = None
) -> bool:
    """Create an on-demand table with string keys (partition[, sort]); False if it already exists."""
    table = TableKeys(keys, ttl_attribute)
    try:
        await client.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=table.key_schema(),
            AttributeDefinitions=table.attribute_definitions(),
        )
    except ClientError as exc:
        if error_code(exc) == "ResourceInUseException":
            return False
        raise
    await client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    if ttl_attribute is not None:
        await client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute}
        )
    return True


async def create_worker_tables(
    client: DynamoDBClient, checkpoints: str, dead_letters: str
) -> dict[str, bool]:
    """Create the worker's tables that are missing; by table name, whether it was created now."""
    names = {checkpoints: CHECKPOINTS, dead_letters: DEAD_LETTERS}
    return {
        name: await create_table(client, name, keys.attributes, keys.ttl_attribute)
        for name, keys in names.items()
    }
