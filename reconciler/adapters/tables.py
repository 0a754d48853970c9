"""The worker's own tables, created on request (``--create-tables``) for local and test use.

Production creates them from infrastructure code; see the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from reconciler.adapters.aws import error_code

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_dynamodb.type_defs import KeySchemaElementTypeDef


async def create_table(client: DynamoDBClient, name: str, keys: tuple[str, ...]) -> bool:
    """Create an on-demand table with string keys (partition[, sort]); False if it already exists."""
    schema: list[KeySchemaElementTypeDef] = [{"AttributeName": keys[0], "KeyType": "HASH"}]
    schema += [{"AttributeName": k, "KeyType": "RANGE"} for k in keys[1:]]
    try:
        await client.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=schema,
            AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in keys],
        )
    except ClientError as exc:
        if error_code(exc) == "ResourceInUseException":
            return False
        raise
    await client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return True


async def create_worker_tables(client: DynamoDBClient, checkpoints: str, dead_letters: str) -> None:
    await create_table(client, checkpoints, ("stream_arn", "shard_id"))
    await create_table(client, dead_letters, ("letter_id",))
