"""DynamoDB: linked items (Query, GetItem, BatchGetItem, conditional DeleteItem; Scan for the orphan
sweep). The lease table is ``leases.py``, the dead-letter table ``letters.py``.

A linked item is deleted with ``DeleteItem`` conditioned on it still being linked, returning ``ALL_OLD``, so a
re-linked item is never deleted and a changed one is seen.
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_DeleteItem.html
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, aws_operation, error_code
from reconciler.core.dynamodb_json import Image, decode_image, encode_key, encode_value
from reconciler.core.plan import LinkQuery
from reconciler.errors import PermanentError, TransientError
from reconciler.ports import CandidatePage

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

MAX_BATCH_GET_KEYS = 100


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
            images: list[Image] = [decode_image(raw) for raw in page.get("Items", [])]
            if query.index:
                images = await self._reread(query, key_attributes, images)
            for image in images:
                yield image
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def _reread(
        self, query: LinkQuery, key_attributes: Sequence[str], listed: list[Image]
    ) -> list[Image]:
        """GSIs are eventually consistent and may project only keys: read a page's items themselves (one
        batched, consistent read) and skip each unless it still matches (a stale index entry is no link)."""
        keys = [{name: image[name] for name in key_attributes if name in image} for image in listed]
        if any(len(key) != len(key_attributes) for key in keys):
            raise PermanentError(f"index {query.index} of {query.table} does not project the key")
        current = await self.get_many(query.table, keys)
        return [image for image in current if image is not None and query.matches(image)]

    async def get(self, table: str, key: Mapping[str, object]) -> Image | None:
        response = await self._call(
            self._client.get_item, TableName=table, Key=encode_key(key), ConsistentRead=True
        )
        item = response.get("Item")
        return decode_image(item) if item else None

    async def get_many(self, table: str, keys: Sequence[Mapping[str, object]]) -> list[Image | None]:
        """``BatchGetItem``, strongly consistent, at most 100 distinct keys a request (a key twice in one
        request is refused). ``UnprocessedKeys`` are asked for again under the retry policy, with its
        backoff, and never dropped: what is still unread after the last attempt is a ``TransientError``.
        https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html"""
        names = sorted(keys[0]) if keys else []
        found: dict[_Ident, Image] = {}
        distinct = list(dict.fromkeys(_ident(key, names) for key in keys))
        for start in range(0, len(distinct), MAX_BATCH_GET_KEYS):
            pending = [encode_key(dict(ident)) for ident in distinct[start : start + MAX_BATCH_GET_KEYS]]
            await self._call(self._batch_get, table=table, names=names, pending=pending, found=found)
        return [found.get(_ident(key, names)) for key in keys]

    @aws_operation("batch_get_item")
    async def _batch_get(
        self, *, table: str, names: list[str], pending: list[dict[str, Any]], found: dict[_Ident, Image]
    ) -> None:
        """One ``BatchGetItem`` for ``pending``; leaves in ``pending`` only the keys left unprocessed."""
        response = await self._client.batch_get_item(
            RequestItems={table: {"Keys": pending, "ConsistentRead": True}}
        )
        for raw in response.get("Responses", {}).get(table, []):
            image = decode_image(raw)
            found[_ident(image, names)] = image
        left = response.get("UnprocessedKeys", {}).get(table)
        pending[:] = list(left["Keys"]) if left else []
        if pending:
            raise TransientError(f"BatchGetItem left {len(pending)} keys unprocessed")

    async def scan_linked(
        self, table: str, attributes: Sequence[str], *, start: Image | None, limit: int
    ) -> CandidatePage:
        """One ``Scan`` page reading only ``attributes`` (``ProjectionExpression``); DynamoDB charges the
        items' whole size anyway, which ``ReturnConsumedCapacity`` reports for the sweep's read budget.
        https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Scan.html"""
        names = {f"#a{n}": name for n, name in enumerate(attributes)}
        params: dict[str, Any] = {
            "TableName": table,
            "Limit": limit,
            "ProjectionExpression": ", ".join(names),
            "ExpressionAttributeNames": names,
            "ReturnConsumedCapacity": "TOTAL",
        }
        return await read_page(self._call, self._client.scan, params, start)

    async def delete_linked(self, query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        """A conditional ``DeleteItem`` returning ``ALL_OLD``: an item re-linked meanwhile is left alone."""
        return await self._call(
            self._delete_if,
            TableName=query.table,
            Key=encode_key(key),
            **_condition(query, "ConditionExpression"),
            ReturnValues="ALL_OLD",
        )

    @aws_operation("delete_item")
    async def _delete_if(self, **kwargs: Any) -> Image | None:
        try:
            response = await self._client.delete_item(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None  # gone, or no longer linked: not ours
            raise
        old = response.get("Attributes")
        return decode_image(old) if old else None


_Ident = tuple[tuple[str, object], ...]


async def read_page(
    call: Caller, operation: Callable[..., Awaitable[Any]], params: dict[str, Any], start: Image | None
) -> CandidatePage:
    """One ``Scan`` or ``Query`` page from ``start`` (None: the beginning): its items, where the next page
    starts (None at the end) and the read units it consumed (``ReturnConsumedCapacity`` in ``params``)."""
    if start is not None:
        params = params | {"ExclusiveStartKey": encode_key(start)}
    page = await call(operation, **params)
    last = page.get("LastEvaluatedKey")
    return CandidatePage(
        items=[decode_image(item) for item in page.get("Items", [])],
        start=decode_image(last) if last else None,
        read_units=float(page.get("ConsumedCapacity", {}).get("CapacityUnits", 0.0)),
    )


def _ident(item: Mapping[str, object], names: Sequence[str]) -> _Ident:
    """An item's key as a hashable value, to match what ``BatchGetItem`` answers (in any order) to what
    was asked for. Key values are strings, numbers (Decimal, equal to the int a caller may pass) or bytes."""
    return tuple((name, item.get(name)) for name in names)


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
