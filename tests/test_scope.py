"""The scope helpers refuse every key and identifier that could widen or escape an item's prefix."""

from __future__ import annotations

import decimal

import pytest

from reconciler.core.scope import (
    S3Location,
    ScopeViolation,
    Template,
    check_in_scope,
    has_unsafe_segments,
    identifier_text,
)

SCOPE = S3Location("stt-transcripts", "acct-1/tr-1/")


@pytest.mark.parametrize(
    "key",
    [
        "acct-1/tr-1/a\x00b",
        "acct-1/tr-1/a\x1fb",
        "acct-1/tr-1/a\x7fb",
        "acct-1/tr-1/a\nb",
        "acct-1/tr-1//a",
        "acct-1/tr-1/./a",
        "acct-1/tr-1/../a",
        "acct-1/tr-1/..",
        "acct-1/tr-1/../",
        "acct-1/../tr-1/a/",
        "acct-1/tr-1/a/../",
    ],
)
def test_keys_with_control_characters_or_empty_dot_segments_are_unsafe(key: str) -> None:
    assert has_unsafe_segments(key)


@pytest.mark.parametrize(
    "key",
    [
        "acct-1/tr-1/a b.wav",
        "acct-1/tr-1/a~!$&'()*+,;=@.json",
        "acct-1/tr-1/",
        "acct-1/tr-1/.hidden",
        "a..b/c",
    ],
)
def test_printable_keys_and_a_prefix_trailing_slash_are_safe(key: str) -> None:
    assert not has_unsafe_segments(key)


@pytest.mark.parametrize("value", [".", "..", "", "a/b", "/"])
def test_dots_empty_and_slashes_are_not_identifiers(value: object) -> None:
    with pytest.raises(ScopeViolation) as raised:
        identifier_text("transcript_id", {"transcript_id": value})
    assert str(raised.value) == "identifier 'transcript_id' is empty, '.', '..' or holds '/'"


@pytest.mark.parametrize("value", ["a..b", "..a", "a.", "TENANT#acme", "50%"])
def test_dots_inside_an_identifier_are_ordinary_characters(value: str) -> None:
    assert identifier_text("transcript_id", {"transcript_id": value}) == value


@pytest.mark.parametrize("value", [decimal.Decimal("Infinity"), decimal.Decimal("-Infinity")])
def test_infinities_are_not_identifiers(value: object) -> None:
    with pytest.raises(ScopeViolation) as raised:
        identifier_text("transcript_id", {"transcript_id": value})
    assert str(raised.value) == "identifier 'transcript_id' is missing or not a string or integer"


@pytest.mark.parametrize("value", [None, decimal.Decimal("1.5"), decimal.Decimal("NaN"), True, b"tr-1"])
def test_an_identifier_must_be_a_string_or_an_integer(value: object) -> None:
    image = {} if value is None else {"transcript_id": value}
    with pytest.raises(ScopeViolation) as raised:
        identifier_text("transcript_id", image)
    assert str(raised.value) == "identifier 'transcript_id' is missing or not a string or integer"


@pytest.mark.parametrize(
    ("value", "text"),
    [("tr-1", "tr-1"), ("a.b", "a.b"), (decimal.Decimal(42), "42"), (decimal.Decimal("4.2E+1"), "42")],
)
def test_plain_tokens_and_integers_are_identifiers(value: object, text: str) -> None:
    assert identifier_text("transcript_id", {"transcript_id": value}) == text


def test_a_target_outside_every_scope_is_refused_with_a_reason() -> None:
    with pytest.raises(ScopeViolation) as raised:
        check_in_scope(S3Location("stt-transcripts", "acct-1/tr-2/a"), [SCOPE])
    assert str(raised.value) == "target is outside the item's scope"


def test_a_target_with_a_dot_segment_is_refused_even_under_its_scope() -> None:
    with pytest.raises(ScopeViolation) as raised:
        check_in_scope(S3Location("stt-transcripts", "acct-1/tr-1/../tr-2/a"), [SCOPE])
    assert str(raised.value) == "key has empty, '.' or '..' segments or control characters"


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("https://stt-uploads/a", "not an s3:// URI"),
        (["s3://stt-uploads/a"], "not an s3:// URI"),
        ("s3://stt-uploads", "URI names no key"),
        ("s3://stt-uploads/", "URI names no key"),
        ("s3://Stt_Uploads/a", "URI bucket is not a valid bucket name"),
    ],
)
def test_a_uri_that_names_no_object_is_refused_with_a_reason(uri: object, reason: str) -> None:
    with pytest.raises(ScopeViolation) as raised:
        S3Location.parse(uri)
    assert str(raised.value) == reason


@pytest.mark.parametrize("source", ["s3://{bucket}/{id}/", "s3://b{/{id}/", "s3://b}/{id}/"])
def test_a_template_bucket_is_literal(source: str) -> None:
    with pytest.raises(ScopeViolation) as raised:
        Template.parse(source)
    assert str(raised.value) == "the bucket of a template must be literal"


@pytest.mark.parametrize("segment", ["{id", "id}", "x{id}", "{id}-{n}", "{1d}"])
def test_a_placeholder_must_be_a_whole_path_segment(segment: str) -> None:
    with pytest.raises(ScopeViolation, match="must be a whole path segment"):
        Template.parse(f"s3://media/{segment}/")


def test_a_template_renders_literal_segments_before_and_after_placeholders() -> None:
    template = Template.parse("s3://media/tenants/{tenant}/items/{id}/raw/")
    assert template.source == "s3://media/tenants/{tenant}/items/{id}/raw/"
    assert template.fields == ("tenant", "id")
    assert template.render({"tenant": "t1", "id": "i9"}) == S3Location("media", "tenants/t1/items/i9/raw/")
