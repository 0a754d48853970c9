"""DynamoDB JSON <-> Python values, in one place; numbers parsed exactly and held to DynamoDB's limits.

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

# DynamoDB numbers: up to 38 significant digits, magnitudes 1E-130 .. 9.99..E+125, written out in full by the
# service (1E+39 arrives as 40 characters). Parsed exactly with Decimal(text), then checked against those
# limits: a context with prec=38 would trap Rounded on valid values such as "1" followed by 39 zeros.
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/HowItWorks.NamingRulesDataTypes.html
MAX_DIGITS = 38
MAX_ADJUSTED_EXPONENT = 125
MIN_ADJUSTED_EXPONENT = -130
MAX_NUMBER_TEXT = 256  # the longest valid number in full is about 170 characters
MAX_DEPTH = 32  # DynamoDB nests documents at most 32 levels deep

AttributeValue = Mapping[str, Any]
Image = Mapping[str, object]


def _number(text: object) -> decimal.Decimal:
    if not isinstance(text, str):
        raise DecodeError(f"N value must be a string, got {type(text).__name__}")
    if len(text) > MAX_NUMBER_TEXT:
        raise DecodeError("N value is longer than any DynamoDB number")
    try:
        value = decimal.Decimal(text)  # exact: no context applies
    except decimal.InvalidOperation as exc:
        raise DecodeError("N value is not a number") from exc
    if not value.is_finite():
        raise DecodeError("N value is not a finite number")
    if value.is_zero():
        return value
    digits = value.as_tuple().digits
    significant = len("".join(map(str, digits)).rstrip("0"))  # 1E+39 in full has 1 significant digit
    if significant > MAX_DIGITS:
        raise DecodeError("N value has more than 38 significant digits")
    if not MIN_ADJUSTED_EXPONENT <= value.adjusted() <= MAX_ADJUSTED_EXPONENT:
        raise DecodeError("N value is outside DynamoDB's range (1E-130 .. 9.99E+125)")
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


def decode_value(value: object, depth: int = 0) -> object:  # noqa: C901, PLR0911, PLR0912 - one branch per tag
    """Turn one DynamoDB attribute value (``{"S": "x"}``) into a Python value."""
    if depth > MAX_DEPTH:
        raise DecodeError(f"value is nested deeper than DynamoDB allows ({MAX_DEPTH} levels)")
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
            return decode_image(raw, depth + 1)
        case "L":
            return [decode_value(v, depth + 1) for v in _typed_list(raw, "L")]
        case "SS":
            return frozenset(decode_value({"S": v}) for v in _typed_list(raw, "SS"))
        case "NS":
            return frozenset(_number(v) for v in _typed_list(raw, "NS"))
        case "BS":
            return frozenset(_binary(v) for v in _typed_list(raw, "BS"))
        case _:
            raise DecodeError("unknown attribute type tag")  # not echoed: input text stays out of logs


def decode_image(image: object, depth: int = 0) -> dict[str, object]:
    """Turn a whole item image (``{"attr": {"S": "x"}, ...}``) into a dict of Python values."""
    if not isinstance(image, Mapping):
        raise DecodeError("an image must be an object of attribute values")
    decoded: dict[str, object] = {}
    for name, value in image.items():
        if not isinstance(name, str):
            raise DecodeError("attribute names must be strings")
        decoded[name] = decode_value(value, depth)
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
