"""What ``reconciler plan`` accepts, recognised by shape: a bare image, ``aws dynamodb get-item`` output, one
stream record (GetRecords or Lambda spelling), or a whole Lambda event or GetRecords response."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.core.dynamodb_json import Image, decode_image
from reconciler.core.records import StreamRecord, Undecodable, decode_record
from reconciler.errors import DecodeError

_TABLE_OF_STREAM = re.compile(r"arn:[^:]+:dynamodb:[^:]*:[^:]*:table/([^/]+)/stream/")


@dataclass(frozen=True, slots=True)
class PlanInput:
    """One thing to plan: an old image given as such, or a stream record (decoded, or kept as undecodable)."""

    label: str
    image: Image | None = None
    record: StreamRecord | Undecodable | None = None
    table: str | None = None
    """The source table named by the record's ``eventSourceARN``, when it has one."""


def read_inputs(document: object) -> list[PlanInput]:
    """Every plannable thing in a parsed JSON document; DecodeError if it is none of the accepted shapes."""
    if isinstance(document, Mapping) and isinstance(document.get("Records"), list):
        return [_record(raw, n) for n, raw in enumerate(document["Records"], start=1)]
    if isinstance(document, Sequence) and not isinstance(document, str):
        return [_record(raw, n) for n, raw in enumerate(document, start=1)]
    if isinstance(document, Mapping) and "dynamodb" in document:
        return [_record(document, 1)]
    if isinstance(document, Mapping) and isinstance(document.get("Item"), Mapping):
        return [PlanInput("item", image=decode_image(document["Item"]))]
    if isinstance(document, Mapping):
        return [PlanInput("image", image=decode_image(document))]
    raise DecodeError("input is not an image, get-item output, stream record or event")


def _record(raw: object, number: int) -> PlanInput:
    if not isinstance(raw, Mapping):
        raise DecodeError(f"record {number} is not an object")
    source = raw.get("eventSourceARN")
    match = _TABLE_OF_STREAM.match(source) if isinstance(source, str) else None
    record = decode_record(raw)
    return PlanInput(f"record {number}", record=record, table=match.group(1) if match else None)
