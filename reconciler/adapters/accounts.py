"""DynamoDB: the accounts an age rule applies to, from a table whose items name them.

One ``Scan`` page after another, projecting only the account attribute (and the filter's, which the
``FilterExpression`` compares server-side; a filtered Scan still reads, and is billed for, every item).
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_Scan.html
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from reconciler.adapters.aws import Caller
from reconciler.core.dynamodb_json import decode_image, encode_value
from reconciler.core.spec import AccountsTable

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient


class DynamoDBAccountDirectory:
    def __init__(self, client: DynamoDBClient, call: Caller) -> None:
        self._client = client
        self._call = call

    async def accounts(self, source: AccountsTable) -> AsyncIterator[object]:
        params: dict[str, Any] = {
            "TableName": source.table,
            "ProjectionExpression": "#a",
            "ExpressionAttributeNames": {"#a": source.attribute},
        }
        if source.filter_attribute is not None:
            params["FilterExpression"] = "#f = :v"
            params["ExpressionAttributeNames"]["#f"] = source.filter_attribute
            params["ExpressionAttributeValues"] = {":v": encode_value(source.filter_value)}
        while True:
            page = await self._call(self._client.scan, **params)
            for raw in page.get("Items", []):
                image = decode_image(raw)
                if source.attribute in image:
                    yield image[source.attribute]
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
