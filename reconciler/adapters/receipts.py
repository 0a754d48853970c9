"""DynamoDB: the receipts table, one item per deleted item (``source_table`` + ``key_hash``).

Written with a conditional ``PutItem``: the first receipt of a stream event stays (a redelivered record writes
nothing), and an earlier event's receipt never replaces a later one's. Each receipt carries ``retain_until``
(epoch seconds), the table's TTL attribute, so receipts expire after the configured retention.
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import TYPE_CHECKING, Any, cast, get_args

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, aws_operation, error_code
from reconciler.core.dynamodb_json import decode_image, encode_key
from reconciler.core.plan import key_hash
from reconciler.core.scope import S3Location
from reconciler.ports import (
    ItemKey,
    LetterKind,
    Receipt,
    ReceiptCounts,
    ReceiptLetterStatus,
    Verification,
)

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

COUNTS = ("object_versions", "delete_markers", "under_prefixes", "linked_items", "absent")
# Event times as fixed-width UTC text, so that text order is time order in the write's condition.
_TIME = "%Y-%m-%dT%H:%M:%S.%f+00:00"


class DynamoDBReceiptStore:
    def __init__(self, client: DynamoDBClient, call: Caller, table: str, retention_days: int) -> None:
        self._client = client
        self._call = call
        self._table = table
        self._retention = dt.timedelta(days=retention_days)

    async def put(self, receipt: Receipt) -> bool:
        # New, or a receipt of another, earlier (or simultaneous: AWS rounds to the second) event.
        return await self._put(receipt, "attribute_not_exists(key_hash) OR (#e <> :e AND event_time <= :t)")

    async def update(self, receipt: Receipt) -> bool:
        # New, this event's receipt, or one of an earlier (or simultaneous) event.
        return await self._put(receipt, "attribute_not_exists(key_hash) OR #e = :e OR event_time <= :t")

    async def _put(self, receipt: Receipt, condition: str) -> bool:
        item = to_item(receipt)
        item["retain_until"] = {"N": str(int((receipt.completed_at + self._retention).timestamp()))}
        return await self._call(
            self._put_if,
            TableName=self._table,
            Item=item,
            ConditionExpression=condition,
            ExpressionAttributeNames={"#e": "event"},
            ExpressionAttributeValues={":e": item["event"], ":t": item["event_time"]},
        )

    @aws_operation("put_item")
    async def _put_if(self, **kwargs: Any) -> bool:
        try:
            await self._client.put_item(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False  # this event's receipt, or a later event's, is there already
            raise
        return True

    async def get(self, table: str, key_hash: str) -> Receipt | None:
        response = await self._call(
            self._client.get_item,
            TableName=self._table,
            Key={"source_table": {"S": table}, "key_hash": {"S": key_hash}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return from_item(item) if item else None


def _time(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime(_TIME)


def to_item(receipt: Receipt) -> dict[str, Any]:
    """The receipt as a DynamoDB item (without its expiry)."""
    item: dict[str, Any] = {
        "source_table": {"S": receipt.table},
        "key_hash": {"S": key_hash(receipt.table, receipt.key)},
        "item_key": {"M": encode_key(receipt.key)},
        "cause": {"S": receipt.cause},
        "event": {"S": receipt.event},
        "event_time": {"S": _time(receipt.event_time)},
        "completed_at": {"S": _time(receipt.completed_at)},
        "counts": {"M": {name: {"N": str(getattr(receipt.counts, name))} for name in COUNTS}},
        "verification": {"S": receipt.verification},
        "leftover": {"N": str(receipt.leftover)},
        "objects": {"L": [{"S": str(o)} for o in receipt.objects]},
        "prefixes": {"L": [{"S": str(p)} for p in receipt.prefixes]},
        "items": {
            "L": [{"M": {"table": {"S": i.table}, "key": {"M": encode_key(i.key)}}} for i in receipt.items]
        },
        "omitted": {"N": str(receipt.omitted)},
    }
    optional = {
        "item_expires_at": receipt.expires_at and _time(receipt.expires_at),
        "verified_at": receipt.verified_at and _time(receipt.verified_at),
        "dead_letter_id": receipt.dead_letter_id,
        "dead_letter_kind": receipt.dead_letter_kind,
        "dead_letter_status": receipt.dead_letter_status,
    }
    item.update({name: {"S": value} for name, value in optional.items() if value})
    return item


def from_item(raw: dict[str, Any]) -> Receipt:
    item = decode_image(raw)
    counts = cast("dict[str, decimal.Decimal]", item["counts"])
    kind = item.get("dead_letter_kind")
    # Receipts written before the status was stored held pending letters only.
    status = item.get("dead_letter_status", "pending" if kind else None)
    verification = str(item["verification"])
    assert verification in get_args(Verification)  # noqa: S101 - written by to_item
    assert kind is None or kind in get_args(LetterKind)  # noqa: S101 - written by to_item
    assert status is None or status in get_args(ReceiptLetterStatus)  # noqa: S101 - written by to_item
    return Receipt(
        table=str(item["source_table"]),
        key=cast("dict[str, object]", item["item_key"]),
        cause=str(item["cause"]),
        event=str(item["event"]),
        event_time=_parsed(item["event_time"]),
        completed_at=_parsed(item["completed_at"]),
        counts=ReceiptCounts(**{name: int(counts.get(name, 0)) for name in COUNTS}),
        verification=cast("Verification", verification),
        expires_at=_parsed(item["item_expires_at"]) if "item_expires_at" in item else None,
        leftover=int(cast("decimal.Decimal", item["leftover"])),
        verified_at=_parsed(item["verified_at"]) if "verified_at" in item else None,
        dead_letter_id=cast("str | None", item.get("dead_letter_id")),
        dead_letter_kind=cast("LetterKind | None", kind),
        dead_letter_status=cast("ReceiptLetterStatus | None", status),
        objects=tuple(S3Location.parse(o) for o in cast("list[str]", item["objects"])),
        prefixes=tuple(S3Location.parse(p) for p in cast("list[str]", item["prefixes"])),
        items=tuple(ItemKey(str(i["table"]), i["key"]) for i in cast("list[dict[str, Any]]", item["items"])),
        omitted=int(cast("decimal.Decimal", item["omitted"])),
    )


def _parsed(text: object) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text))
