"""Every refused target is recorded with what it was, why, and a reason an operator can read; the rest of the
item is still planned, whatever order the refused and the good targets come in."""

from __future__ import annotations

import dataclasses
import decimal

import pytest

from reconciler.core.plan import LinkQuery, Unsafe, UnsafeReason, key_hash, resolve
from reconciler.core.scope import S3Location, Template
from reconciler.core.spec import EntitySpec, LinkSpec, TableSpec
from reconciler.rules import Rules

IMAGE = {
    "transcript_id": "tr-1",
    "account_id": "acct-1",
    "audio_url": "s3://stt-uploads/acct-1/tr-1/audio.wav",
}
OWN_AUDIO = S3Location("stt-uploads", "acct-1/tr-1/audio.wav")
FOREIGN = "s3://stt-uploads/acct-2/tr-9/audio.wav"

# Two object attributes and no prefix, so that every object is planned on its own.
TWO_ATTRIBUTES = TableSpec(
    "media",
    ("id",),
    entities=(
        EntitySpec(
            "", scopes=(Template.parse("s3://media/{id}/"),), object_attributes=("cover_url", "audio_url")
        ),
    ),
)


def _transcripts(rules: Rules, **changes: object) -> TableSpec:
    """The demo's transcripts table, compiled, with ``changes`` to its entity (as loaded rules cannot say)."""
    table = rules.compile().tables["transcripts"]
    (entity,) = table.entities
    return dataclasses.replace(table, entities=(dataclasses.replace(entity, **changes),))  # type: ignore[arg-type]


def test_an_unsafe_identifier_is_recorded_against_the_scope(rules: Rules) -> None:
    plan = resolve(_transcripts(rules), {**IMAGE, "transcript_id": ".."})
    assert plan.unsafe == (
        Unsafe(
            "scope", UnsafeReason.IDENTIFIER, "identifier 'transcript_id' is empty, '.', '..' or holds '/'"
        ),
    )


def test_a_foreign_uri_is_recorded_as_out_of_scope(rules: Rules) -> None:
    plan = resolve(_transcripts(rules), {**IMAGE, "audio_url": FOREIGN})
    assert plan.unsafe == (Unsafe(FOREIGN, UnsafeReason.OUT_OF_SCOPE, "target is outside the item's scope"),)


def test_a_value_that_is_not_a_uri_is_recorded_against_its_attribute(rules: Rules) -> None:
    plan = resolve(_transcripts(rules), {**IMAGE, "audio_url": "file:///audio.wav"})
    assert plan.unsafe == (Unsafe("audio_url", UnsafeReason.NOT_A_URI, "not an s3:// URI"),)


@pytest.mark.parametrize(
    "first", ["http://elsewhere/a.wav", FOREIGN], ids=["not-a-uri-first", "out-of-scope-first"]
)
def test_a_refused_uri_in_a_list_does_not_hide_the_good_ones_after_it(rules: Rules, first: str) -> None:
    plan = resolve(_transcripts(rules), {**IMAGE, "audio_url": [first, str(OWN_AUDIO)]})
    assert plan.objects == (OWN_AUDIO,)
    assert len(plan.unsafe) == 1


@pytest.mark.parametrize("cover", [None, "absent"], ids=["null", "absent"])
def test_an_attribute_with_nothing_linked_does_not_hide_the_next_attribute(cover: str | None) -> None:
    image: dict[str, object] = {"id": "m1", "audio_url": "s3://media/m1/audio.wav"}
    if cover is None:
        image["cover_url"] = None
    plan = resolve(TWO_ATTRIBUTES, image)
    assert plan.objects == (S3Location("media", "m1/audio.wav"),)
    assert plan.is_safe


def _linked_by(rules: Rules, attribute: str) -> TableSpec:
    return _transcripts(rules, links=(LinkSpec("speech_outputs", "transcript_id", attribute),))


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("", "link value is empty"),
        (b"", "link value is empty"),
        (True, "link value must be a string, number or binary"),
        (["tr-1"], "link value must be a string, number or binary"),
    ],
    ids=["empty-text", "empty-binary", "bool", "list"],
)
def test_an_unusable_link_value_is_refused_and_recorded(rules: Rules, value: object, detail: str) -> None:
    plan = resolve(_linked_by(rules, "language"), {**IMAGE, "language": value})
    assert plan.links == ()
    assert plan.unsafe == (Unsafe("language", UnsafeReason.LINK_VALUE, detail),)


@pytest.mark.parametrize("value", ["en", b"\x01", decimal.Decimal(7)], ids=["text", "binary", "number"])
def test_text_binary_and_number_link_values_are_queried(rules: Rules, value: object) -> None:
    plan = resolve(_linked_by(rules, "language"), {**IMAGE, "language": value})
    assert plan.links == (LinkQuery("speech_outputs", "transcript_id", value, None),)


def test_a_key_hash_is_stable_across_releases() -> None:
    """Dead letters and logs written by an older worker must still match today's for the same item."""
    assert key_hash("transcripts", {"transcript_id": "tr-1"}) == "ecc675cfb87f31ac"
    assert (
        key_hash("speech_outputs", {"transcript_id": "tr-1", "output_type": "translation"})
        == "e49f7e63a3f28058"
    )


def test_an_unsafe_identifier_leaves_a_plan_with_no_scope_and_no_work(rules: Rules) -> None:
    plan = resolve(_transcripts(rules), {**IMAGE, "account_id": "."})
    assert (plan.scopes, plan.objects, plan.prefixes, plan.links) == ((), (), (), ())
    assert plan.key == {"transcript_id": "tr-1"}


def test_a_prefix_that_would_leave_the_scope_is_refused_not_planned(rules: Rules) -> None:
    """Loaded rules cannot say this; the planner refuses it all the same."""
    table = _transcripts(rules, prefixes=(Template.parse("s3://stt-transcripts/shared/{transcript_id}/"),))
    plan = resolve(table, IMAGE)
    assert plan.prefixes == ()
    assert plan.unsafe == (
        Unsafe(
            "s3://stt-transcripts/shared/tr-1/",
            UnsafeReason.OUT_OF_SCOPE,
            "target is outside the item's scope",
        ),
    )
