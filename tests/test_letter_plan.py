"""A dead letter's plan: stored as metadata, read back as it was, and checked against the rules before a
redrive runs it. A genuine plan always passes; a plan pointed at another item's scope never does."""

from __future__ import annotations

import dataclasses
import decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.dynamodb_json import decode_value, encode_value
from reconciler.core.letters import LetterPlan, check
from reconciler.core.plan import resolve
from reconciler.core.scope import S3Location, Template
from reconciler.errors import DecodeError
from reconciler.rules import Rules

identifiers = st.one_of(
    st.sampled_from(["acct-1", "acct-2", "tr-1", "tr-10", "..", "", "a/b", "JOB#9", "\u00fcber", "x\x00"]),
    st.text(max_size=8),
    st.integers(0, 10**6).map(decimal.Decimal),
)
uris = st.builds(
    lambda bucket, parts: f"s3://{bucket}/" + "/".join(parts),
    st.sampled_from(["stt-uploads", "stt-transcripts", "stt-understanding", "evil"]),
    st.lists(st.one_of(identifiers.map(str), st.just("audio.wav")), max_size=4),
)
images = st.fixed_dictionaries(
    {"transcript_id": identifiers, "account_id": identifiers, "request_id": identifiers},
    optional={"audio_url": uris, "input_url": uris},
)


def _stored(plan: LetterPlan) -> LetterPlan:
    """Through DynamoDB JSON and back, as the adapter stores it."""
    return LetterPlan.from_data(decode_value(encode_value(plan.to_data())))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(images)
def test_a_genuine_plan_reads_back_as_it_was_and_passes_the_check(
    rules: Rules, image: dict[str, object]
) -> None:
    spec = rules.compile()
    for table in ("transcripts", "llm_requests"):
        plan = LetterPlan.of(resolve(spec.tables[table], image))
        assert _stored(plan) == plan
        assert check(plan, spec) == [], plan


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(images, images)
def test_a_plan_pointed_at_another_items_scope_is_refused(
    rules: Rules, own: dict[str, object], other: dict[str, object]
) -> None:
    """The letter's key names the item: the other item's scopes, targets and links do not pass as its own."""
    spec = rules.compile()
    table = spec.tables["transcripts"]
    theirs = LetterPlan.of(resolve(table, other))
    ours = LetterPlan.of(resolve(table, own))
    if str(own["transcript_id"]) == str(other["transcript_id"]):
        return
    # Their scopes and targets, or their links, under our key: each is refused on its own.
    scoped = dataclasses.replace(theirs, key=ours.key, links=())
    if theirs.scopes or theirs.objects or theirs.prefixes:
        assert check(scoped, spec) != []
    for link in theirs.links:
        assert check(dataclasses.replace(ours, links=(link,)), spec) != [], link


def test_a_link_to_another_value_a_link_the_rules_lack_and_a_wider_scope_are_refused(rules: Rules) -> None:
    spec = rules.compile()
    image = {
        "transcript_id": "tr-1",
        "account_id": "acct-1",
        "audio_url": "s3://stt-uploads/acct-1/tr-1/a.wav",
    }
    plan = LetterPlan.of(resolve(spec.tables["transcripts"], image))
    speech, llm = plan.links
    tampered = {
        "value": dataclasses.replace(plan, links=(dataclasses.replace(speech, value="tr-10"), llm)),
        "attribute": dataclasses.replace(plan, links=(dataclasses.replace(speech, attribute="account_id"),)),
        "inherited": dataclasses.replace(
            plan,
            links=(dataclasses.replace(speech, inherited=(S3Location("stt-understanding", "acct-1/"),)),),
        ),
        "table": dataclasses.replace(plan, table="speech_outputs"),
        "key": dataclasses.replace(plan, key={"transcript_id": "tr-1", "extra": "x"}),
    }
    for name, changed in tampered.items():
        assert check(changed, spec) != [], name
    assert check(plan, spec) == []


@pytest.mark.parametrize(
    ("location", "admitted"),
    [
        (S3Location("stt-uploads", "acct-9/tr-1/"), True),  # the account is not part of the key
        (S3Location("stt-uploads", "acct-1/tr-2/"), False),  # another transcript
        (S3Location("stt-uploads", "acct-1/"), False),  # wider
        (S3Location("stt-uploads", "acct-1/tr-1/x/"), False),  # narrower is not what the template renders
        (S3Location("stt-uploads", "../tr-1/"), False),  # not a safe segment
        (S3Location("stt-transcripts", "acct-1/tr-1/"), False),  # another bucket
    ],
)
def test_a_template_admits_only_what_it_renders_for_the_key(location: S3Location, admitted: bool) -> None:
    template = Template.parse("s3://stt-uploads/{account_id}/{transcript_id}/")
    assert template.admits(location, {"transcript_id": "tr-1"}) is admitted


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"format": 2, "table": "t", "key": {}},
        {"format": 1, "table": 7, "key": {}},
        {"format": 1, "table": "t", "key": {}, "objects": ["https://b/k"]},
        {
            "format": 1,
            "table": "t",
            "key": {},
            "links": [{"table": "x", "attribute": "a", "scope": "nobody"}],
        },
        {"format": 1, "table": "t", "key": {}, "refused": "s3://b/k"},
    ],
)
def test_a_stored_plan_that_is_not_one_cannot_be_read(data: object) -> None:
    with pytest.raises(DecodeError):
        LetterPlan.from_data(data)
