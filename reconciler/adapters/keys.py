"""Key attribute types from ``DescribeTable``: the orphan sweep needs them to read "906" as a string or a
number (``core.reverse.KeyTypes``). One call per table, once per sweep; the grant is the pre-flight's.
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_DescribeTable.html
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from reconciler.adapters.aws import Caller
from reconciler.core.reverse import KeyType

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient


async def key_types(
    client: DynamoDBClient, call: Caller, tables: Iterable[str]
) -> dict[str, dict[str, KeyType]]:
    """Per table, the type of each attribute of its primary key."""
    found: dict[str, dict[str, KeyType]] = {}
    for table in tables:
        described = (await call(client.describe_table, TableName=table))["Table"]
        types = {d["AttributeName"]: d["AttributeType"] for d in described.get("AttributeDefinitions", [])}
        key = [k["AttributeName"] for k in described.get("KeySchema", [])]
        found[table] = {name: KeyType(types[name]) for name in key}
    return found
