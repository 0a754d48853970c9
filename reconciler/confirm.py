"""Confirming a deletion: find its receipt by key, show it as JSON, and re-check its targets live.

Served by ``GET /deletions/{table}/{key}`` on the worker's HTTP port and by ``reconciler receipt`` and
``reconciler verify``. A key is given as its key hash (16 hex digits, as logs show it) or as JSON of the key
attributes: plain values (``{"transcript_id": "tr-1"}``) or DynamoDB JSON (``{"id": {"N": "7"}}``, the only
way to give a binary key).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import decimal
import json
import re
import sys
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from reconciler.core.dynamodb_json import decode_value
from reconciler.core.plan import key_hash
from reconciler.errors import DecodeError
from reconciler.ports import ArtifactStore, ItemStore, Receipt, ReceiptStore

if TYPE_CHECKING:
    from reconciler.settings import Settings

EXIT_NONE = 1
EXIT_LEFTOVER = 5
_HASH = re.compile(r"[0-9a-f]{16}")


def parse_key(text: str) -> str | dict[str, object]:
    """A key hash, or the key attributes given as JSON (numbers exact, as DynamoDB writes them)."""
    text = text.strip()
    if _HASH.fullmatch(text):
        return text
    try:
        given = json.loads(text, parse_float=decimal.Decimal, parse_int=decimal.Decimal)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError("a key is a key hash or a JSON object of key attributes") from exc
    if not isinstance(given, dict) or not given:
        raise DecodeError("a key is a key hash or a JSON object of key attributes")
    return {name: _key_value(value) for name, value in given.items()}


def _key_value(value: object) -> object:
    if isinstance(value, dict):
        value = decode_value({tag: str(raw) if tag == "N" else raw for tag, raw in value.items()})
    if isinstance(value, bool) or not isinstance(value, str | bytes | decimal.Decimal):
        raise DecodeError("key values are strings, numbers or binary")
    if isinstance(value, decimal.Decimal):  # as DynamoDB writes numbers back: no exponent, no trailing zeros
        return decimal.Decimal(format(value.normalize(), "f"))
    return value


async def find_receipt(store: ReceiptStore, table: str, key: str) -> Receipt | None:
    """The receipt of the item of ``table`` named by ``key`` (a key hash or key JSON); DecodeError if
    ``key`` is neither."""
    given = parse_key(key)
    if isinstance(given, str):
        return await store.get(table, given)
    receipt = await store.get(table, key_hash(table, given))
    return receipt if receipt is not None and dict(receipt.key) == given else None


def receipt_json(receipt: Receipt) -> dict[str, Any]:
    """The receipt as JSON: identifiers, times and counts, never image content."""
    verification = {
        "verified": "verified",
        "leftover": f"leftover ({receipt.leftover})",
        "not_checked": "not checked",
    }[receipt.verification]
    letter = (
        {
            "id": receipt.dead_letter_id,
            "kind": receipt.dead_letter_kind,
            "status": receipt.dead_letter_status or "pending",
        }
        if receipt.dead_letter_id
        else None
    )
    return {
        "table": receipt.table,
        "key": _key_json(receipt.key),
        "key_hash": key_hash(receipt.table, receipt.key),
        "cause": receipt.cause,
        "event": receipt.event,
        "expires_at": _iso(receipt.expires_at),
        "event_time": _iso(receipt.event_time),
        "completed_at": _iso(receipt.completed_at),
        "counts": dataclasses.asdict(receipt.counts),
        "dead_letter": letter,
        "verification": verification,
        "verified_at": _iso(receipt.verified_at),
        "targets": {
            "objects": [str(o) for o in receipt.objects],
            "prefixes": [str(p) for p in receipt.prefixes],
            "items": [{"table": i.table, "key": _key_json(i.key)} for i in receipt.items],
            "omitted": receipt.omitted,
        },
    }


def _iso(at: dt.datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _key_json(key: Mapping[str, object]) -> dict[str, object]:
    return {name: _value_json(value) for name, value in key.items()}


def _value_json(value: object) -> object:
    if isinstance(value, bytes):
        return {"B": base64.b64encode(value).decode()}
    if isinstance(value, decimal.Decimal):
        if value == value.to_integral_value():
            return int(value)
        return float(value) if decimal.Decimal(repr(float(value))) == value else {"N": str(value)}
    return value


# --- the commands ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Stores:
    receipts: ReceiptStore
    artifacts: ArtifactStore
    items: ItemStore


@contextlib.asynccontextmanager
async def _stores(settings: Settings) -> AsyncIterator[_Stores]:
    """The receipts table of ``settings`` and read access to S3 and DynamoDB, on one set of clients."""
    from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy  # noqa: PLC0415
    from reconciler.adapters.dynamodb import DynamoDBItemStore  # noqa: PLC0415 - botocore stays lazy
    from reconciler.adapters.receipts import DynamoDBReceiptStore  # noqa: PLC0415
    from reconciler.adapters.s3 import S3ArtifactStore  # noqa: PLC0415

    aws = AwsSettings.of(settings)
    call = Caller(RetryPolicy())
    async with AwsClients(aws) as clients:
        yield _Stores(
            DynamoDBReceiptStore(
                clients.dynamodb, call, settings.receipt_table, settings.receipt_retention_days
            ),
            S3ArtifactStore(clients.s3, call),
            DynamoDBItemStore(clients.dynamodb, call),
        )


def show_receipt(settings: Settings, table: str, key: str) -> int:
    """``reconciler receipt``: print the receipt as JSON; exit 1 when there is none."""

    async def find() -> Receipt | None:
        async with _stores(settings) as stores:
            return await find_receipt(stores.receipts, table, key)

    receipt = asyncio.run(find())
    if receipt is None:
        print(f"reconciler: no receipt for that key of table {table!r}", file=sys.stderr)
        return EXIT_NONE
    print(json.dumps(receipt_json(receipt), indent=2))
    return 0


def verify_deletion(settings: Settings, table: str, key: str) -> int:
    """``reconciler verify``: re-check the receipt's targets live, read-only. 0 when every one is absent; 5
    with each leftover printed; 1 when there is no receipt or AWS cannot answer."""
    from reconciler.receipts import Targets, leftovers  # noqa: PLC0415 - the pipeline's modules stay lazy

    async def check() -> tuple[Receipt | None, list[str]]:
        async with _stores(settings) as stores:
            receipt = await find_receipt(stores.receipts, table, key)
            if receipt is None:
                return None, []
            found = await leftovers(Targets.of(receipt), stores.artifacts, stores.items)
            return receipt, [str(f) for f in found]

    receipt, found = asyncio.run(check())
    if receipt is None:
        print(f"reconciler: no receipt for that key of table {table!r}", file=sys.stderr)
        return EXIT_NONE
    name = f"{receipt.table} {key_hash(receipt.table, receipt.key)}"
    for leftover in found:
        print(f"leftover: {leftover}")
    if receipt.omitted:
        print(f"note: {receipt.omitted} targets were not stored in the receipt and are not checked")
    checked = len(Targets.of(receipt))
    if found:
        print(f"{len(found)} leftovers under the {checked} targets of {name}")
        return EXIT_LEFTOVER
    print(f"verified: the {checked} targets of {name} are absent")
    return 0
