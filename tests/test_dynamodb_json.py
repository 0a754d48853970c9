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


@pytest.mark.parametrize(
    "text",
    [
        "1" + "0" * 39,  # 1E+39 as the service writes it: 40 characters, one significant digit
        "9" * 38 + "0" * 88,  # the largest magnitude, written out in full
        "-9.9999999999999999999999999999999999999E+125",
        "1E-130",  # the smallest magnitude
        "0." + "0" * 129 + "1",  # the same, written out in full
        "-0." + "0" * 129 + "1" * 38,
        "0",
        "1.500",  # trailing zeros are not significant digits
    ],
)
def test_every_number_dynamodb_can_store_decodes_exactly(text: str) -> None:
    assert decode_value({"N": text}) == decimal.Decimal(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1" * 39, "more than 38 significant digits"),
        ("1.00000000000000000000000000000000000001", "more than 38 significant digits"),
        ("1E+126", "outside DynamoDB's range"),
        ("1" + "0" * 126, "outside DynamoDB's range"),
        ("1E-131", "outside DynamoDB's range"),
        ("Infinity", "not a finite number"),
        ("sNaN", "not a finite number"),
        ("1" * 300, "longer than any DynamoDB number"),
    ],
)
def test_numbers_dynamodb_cannot_store_are_refused(text: str, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_value({"N": text})


def test_values_nested_deeper_than_dynamodb_allows_are_refused_without_recursing_away() -> None:
    value: dict[str, object] = {"S": "leaf"}
    for _ in range(32):
        value = {"L": [value]}
    assert decode_value(value) is not None  # 32 levels: what DynamoDB stores
    for _ in range(5000):
        value = {"M": {"a": value}}
    with pytest.raises(DecodeError, match="nested deeper"):
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
