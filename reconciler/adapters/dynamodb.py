"""DynamoDB: linked items (Query, GetItem, conditional DeleteItem) and dead letters (leases: ``leases.py``).

A linked item is deleted with ``DeleteItem`` conditioned on it still being linked, returning ``ALL_OLD``, so a
re-linked item is never deleted and a changed one is seen.
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_DeleteItem.html
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, error_code
from reconciler.core.dynamodb_json import Image, decode_image, encode_key, encode_value
from reconciler.core.plan import LinkQuery
from reconciler.errors import PermanentError
from reconciler.ports import DeadLetter

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient


class DynamoDBItemStore:
    def __init__(self, client: DynamoDBClient, call: Caller) -> None:
        self._client = client
        self._call = call

    async def find(self, query: LinkQuery, key_attributes: Sequence[str]) -> AsyncIterator[Image]:
        params: dict[str, Any] = {"TableName": query.table, **_condition(query, "KeyConditionExpression")}
        if query.index:
            params["IndexName"] = query.index
        else:
            params["ConsistentRead"] = True
        while True:
            page = await self._call(self._client.query, **params)
            for raw in page.get("Items", []):
                image: Image = decode_image(raw)
                if query.index:
                    # GSIs are eventually consistent and may project only keys: read the item itself,
                    # and skip it unless it still matches (a stale index entry is not a link).
                    key = {name: image[name] for name in key_attributes if name in image}
                    if len(key) != len(key_attributes):
                        raise PermanentError(f"index {query.index} of {query.table} does not project the key")
                    current = await self.get(query.table, key)
                    if current is None or not query.matches(current):
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

    async def delete_linked(self, query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        """A conditional ``DeleteItem`` returning ``ALL_OLD``: an item re-linked meanwhile is left alone."""
        return await self._call(
            self._delete_if,
            TableName=query.table,
            Key=encode_key(key),
            **_condition(query, "ConditionExpression"),
            ReturnValues="ALL_OLD",
        )

    async def _delete_if(self, **kwargs: Any) -> Image | None:
        try:
            response = await self._client.delete_item(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None  # gone, or no longer linked: not ours
            raise
        old = response.get("Attributes")
        return decode_image(old) if old else None


def _condition(query: LinkQuery, name: str) -> dict[str, Any]:
    """``#k = :v`` (and ``begins_with(#s, :p)`` for a sort-key prefix) as ``name`` with its placeholders."""
    expression = "#k = :v"
    names = {"#k": query.attribute}
    values: dict[str, Any] = {":v": encode_value(query.value)}
    if query.sort_attribute is not None and query.sort_prefix is not None:
        expression += " AND begins_with(#s, :p)"
        names["#s"] = query.sort_attribute
        values[":p"] = {"S": query.sort_prefix}
    return {name: expression, "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}


class DynamoDBDeadLetterStore:
    def __init__(self, client: DynamoDBClient, call: Caller, table: str) -> None:
        self._client = client
        self._call = call
        self._table = table

    async def put(self, letter: DeadLetter) -> bool:
        """``UpdateItem``: the letter's fields are set, its targets ADDed to a string set, so a letter
        written again (a redelivered record) never loses the targets an earlier write named."""
        fields: dict[str, Any] = {
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
            fields["cause"] = {"S": letter.cause}
        if letter.item_table:
            fields["item_table"] = {"S": letter.item_table}
        if letter.item_key:
            fields["item_key"] = {"M": encode_key(letter.item_key)}
        names = {f"#f{n}": name for n, name in enumerate(fields)}
        values = {f":f{n}": value for n, value in enumerate(fields.values())}
        update = "SET " + ", ".join(f"#f{n} = :f{n}" for n in range(len(fields)))
        if letter.targets:
            names["#t"], values[":t"] = "targets", {"SS": list(dict.fromkeys(letter.targets))}
            update += " ADD #t :t"
        response = await self._call(
            self._client.update_item,
            TableName=self._table,
            Key={"letter_id": {"S": letter.letter_id}},
            UpdateExpression=update,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_OLD",
        )
        return "Attributes" not in response  # nothing was there before: the letter is new
