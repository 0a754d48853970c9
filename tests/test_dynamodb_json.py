"""DynamoDB JSON decodes into Python values (every type) and bad values become DecodeError."""

from __future__ import annotations

import base64
import decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.dynamodb_json import decode_image, decode_value, encode_value
from reconciler.errors import DecodeError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"S": "hello"}, "hello"),
        ({"N": "42"}, decimal.Decimal(42)),
        ({"N": "-0.000001"}, decimal.Decimal("-0.000001")),
        ({"N": "1" * 38}, decimal.Decimal("1" * 38)),
        ({"B": b"\x00\x01"}, b"\x00\x01"),
        ({"B": base64.b64encode(b"\x00\x01").decode()}, b"\x00\x01"),
        ({"BOOL": True}, True),
        ({"NULL": True}, None),
        ({"M": {"a": {"S": "x"}, "b": {"N": "1"}}}, {"a": "x", "b": decimal.Decimal(1)}),
        ({"L": [{"S": "x"}, {"BOOL": False}]}, ["x", False]),
        ({"SS": ["a", "b"]}, frozenset({"a", "b"})),
        ({"NS": ["1", "2.5"]}, frozenset({decimal.Decimal(1), decimal.Decimal("2.5")})),
        ({"BS": [b"a", base64.b64encode(b"b").decode()]}, frozenset({b"a", b"b"})),
    ],
)
def test_every_type_decodes(value: dict[str, object], expected: object) -> None:
    assert decode_value(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"S": 1},
        {"N": "not a number"},
        {"N": "1" * 39},  # more than 38 digits of precision
        {"N": "NaN"},
        {"N": 5},
        {"B": "not base64!"},
        {"BOOL": "yes"},
        {"X": "unknown tag"},
        {"S": "a", "N": "1"},
        {},
        "plain string",
        {"L": "not a list"},
        {"M": ["not", "a", "map"]},
    ],
)
def test_bad_values_raise_decode_error(value: object) -> None:
    with pytest.raises(DecodeError):
        decode_value(value)


def test_an_image_must_be_a_mapping() -> None:
    with pytest.raises(DecodeError):
        decode_image([{"S": "x"}])


scalars = st.one_of(
    st.text(),
    st.integers(min_value=-(10**37), max_value=10**37),
    st.binary(),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(), inner, max_size=4)),
    max_leaves=12,
)


def _normal(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return decimal.Decimal(value)
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


@given(values)
def test_encode_then_decode_is_identity(value: object) -> None:
    assert decode_value(encode_value(value)) == _normal(value)
