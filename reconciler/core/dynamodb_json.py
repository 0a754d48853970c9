"""DynamoDB JSON <-> Python values, in one place, with an explicit Decimal context.

Both spellings of binary values are accepted: botocore hands us ``bytes``; the Lambda event format (and golden
files) carry base64 text.
"""

from __future__ import annotations

import base64
import binascii
import decimal
from collections.abc import Mapping
from typing import Any

from reconciler.errors import DecodeError

# DynamoDB numbers: up to 38 digits of precision, magnitudes 1e-130 .. 1e125.
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.NamingRulesDataTypes.html
DYNAMODB_CONTEXT = decimal.Context(
    Emin=-128,
    Emax=126,
    prec=38,
    traps=[decimal.Clamped, decimal.Overflow, decimal.Inexact, decimal.Rounded, decimal.Underflow],
)

AttributeValue = Mapping[str, Any]
Image = Mapping[str, object]


def _number(text: object) -> decimal.Decimal:
    if not isinstance(text, str):
        raise DecodeError(f"N value must be a string, got {type(text).__name__}")
    try:
        value = DYNAMODB_CONTEXT.create_decimal(text)
    except decimal.DecimalException as exc:  # invalid, inexact, rounded, clamped, overflow, underflow
        raise DecodeError("N value is not a DynamoDB number") from exc
    if not value.is_finite():
        raise DecodeError("N value is not a finite number")
    return value


def _binary(raw: object) -> bytes:
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    if isinstance(raw, str):
        try:
            return base64.b64decode(raw, validate=True)
        except binascii.Error as exc:
            raise DecodeError("B value is not base64") from exc
    raise DecodeError(f"B value must be bytes or base64 text, got {type(raw).__name__}")


def _typed_list(raw: object, tag: str) -> list[object]:
    if not isinstance(raw, list):
        raise DecodeError(f"{tag} value must be a list")
    return raw


def decode_value(value: object) -> object:  # noqa: C901, PLR0911, PLR0912 - one branch per type tag
    """Turn one DynamoDB attribute value (``{"S": "x"}``) into a Python value."""
    if not isinstance(value, Mapping) or len(value) != 1:
        raise DecodeError("an attribute value must be an object with exactly one type tag")
    ((tag, raw),) = value.items()
    match tag:
        case "S":
            if not isinstance(raw, str):
                raise DecodeError("S value must be a string")
            return raw
        case "N":
            return _number(raw)
        case "B":
            return _binary(raw)
        case "BOOL":
            if not isinstance(raw, bool):
                raise DecodeError("BOOL value must be a boolean")
            return raw
        case "NULL":
            return None
        case "M":
            return decode_image(raw)
        case "L":
            return [decode_value(v) for v in _typed_list(raw, "L")]
        case "SS":
            return frozenset(decode_value({"S": v}) for v in _typed_list(raw, "SS"))
        case "NS":
            return frozenset(_number(v) for v in _typed_list(raw, "NS"))
        case "BS":
            return frozenset(_binary(v) for v in _typed_list(raw, "BS"))
        case _:
            raise DecodeError(f"unknown attribute type tag {tag!r}")


def decode_image(image: object) -> dict[str, object]:
    """Turn a whole item image (``{"attr": {"S": "x"}, ...}``) into a dict of Python values."""
    if not isinstance(image, Mapping):
        raise DecodeError("an image must be an object of attribute values")
    decoded: dict[str, object] = {}
    for name, value in image.items():
        if not isinstance(name, str):
            raise DecodeError("attribute names must be strings")
        decoded[name] = decode_value(value)
    return decoded


def encode_value(value: object) -> dict[str, Any]:  # noqa: PLR0911 - one branch per type tag
    """Turn a Python value back into DynamoDB JSON (used for keys and query values)."""
    match value:
        case None:
            return {"NULL": True}
        case bool():
            return {"BOOL": value}
        case str():
            return {"S": value}
        case int() | decimal.Decimal():
            return {"N": str(value)}
        case bytes():
            return {"B": value}
        case Mapping():
            return {"M": {str(k): encode_value(v) for k, v in value.items()}}
        case list() | tuple():
            return {"L": [encode_value(v) for v in value]}
        case _:
            raise DecodeError(f"cannot encode {type(value).__name__} as a DynamoDB value")


def encode_key(key: Mapping[str, object]) -> dict[str, Any]:
    """Encode an item key (a small mapping of key attributes)."""
    return {name: encode_value(value) for name, value in key.items()}
