"""An old image resolves to a scope-checked plan; no image, however crafted, yields a target outside scope."""

from __future__ import annotations

import decimal
import re

from conftest import World
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reconciler.core.plan import LinkQuery, UnsafeReason, resolve
from reconciler.core.scope import S3Location
from reconciler.rules import Rules

IMAGE = {
    "transcript_id": "tr-1",
    "account_id": "acct-1",
    "expires_at": decimal.Decimal(1764000000),
    "audio_url": "s3://stt-uploads/acct-1/tr-1/audio.wav",
}


def test_a_clean_image_plans_its_objects_prefixes_and_links(rules: Rules) -> None:
    plan = resolve("transcripts", rules.tables["transcripts"], IMAGE)
    assert plan.is_safe
    assert plan.key == {"transcript_id": "tr-1"}
    assert plan.objects == (S3Location("stt-uploads", "acct-1/tr-1/audio.wav"),)
    assert plan.prefixes == (S3Location("stt-transcripts", "acct-1/tr-1/"),)
    assert plan.links == (
        LinkQuery("speech_outputs", "transcript_id", "tr-1", None),
        LinkQuery("llm_requests", "transcript_id", "tr-1", "by_transcript"),
    )


def test_a_uri_outside_scope_is_refused_and_the_rest_still_planned(rules: Rules) -> None:
    image = {**IMAGE, "audio_url": "s3://stt-uploads/acct-1/tr-2/audio.wav"}  # another transcript's audio
    plan = resolve("transcripts", rules.tables["transcripts"], image)
    assert plan.objects == ()
    assert [u.reason for u in plan.unsafe] == [UnsafeReason.OUT_OF_SCOPE]
    assert plan.unsafe[0].target == "s3://stt-uploads/acct-1/tr-2/audio.wav"
    assert plan.prefixes == (S3Location("stt-transcripts", "acct-1/tr-1/"),)


def test_a_traversal_inside_a_uri_is_refused(rules: Rules) -> None:
    image = {**IMAGE, "audio_url": "s3://stt-uploads/acct-1/tr-1/../tr-2/audio.wav"}
    plan = resolve("transcripts", rules.tables["transcripts"], image)
    assert plan.objects == ()
    assert [u.reason for u in plan.unsafe] == [UnsafeReason.OUT_OF_SCOPE]


def test_a_path_traversal_identifier_leaves_nothing_executable(rules: Rules) -> None:
    for bad in ("../tr-2", "tr-1/../../x", "*", "", "a b", decimal.Decimal("1.5"), None):
        image = {**IMAGE, "transcript_id": bad}
        plan = resolve("transcripts", rules.tables["transcripts"], image)
        assert not plan.has_work, bad
        assert [u.reason for u in plan.unsafe] == [UnsafeReason.IDENTIFIER], bad


def test_integer_identifiers_are_rendered_as_integers(rules: Rules) -> None:
    image = {**IMAGE, "account_id": decimal.Decimal(42), "audio_url": "s3://stt-uploads/42/tr-1/a.wav"}
    plan = resolve("transcripts", rules.tables["transcripts"], image)
    assert plan.is_safe
    assert S3Location("stt-transcripts", "42/tr-1/") in plan.prefixes


def test_uri_lists_and_maps_are_planned_and_non_uris_refused(rules: Rules) -> None:
    image = {
        "request_id": "r1",
        "account_id": "a",
        "input_url": ["s3://stt-llm-gateway/a/r1/in.json", "http://elsewhere/x"],
        "output_url": {"main": "s3://stt-llm-gateway/a/r1/out.json", "bad": decimal.Decimal(3)},
    }
    table = rules.tables["llm_requests"].model_copy(update={"prefixes": ()})
    plan = resolve("llm_requests", table, image)
    assert set(plan.objects) == {
        S3Location("stt-llm-gateway", "a/r1/in.json"),
        S3Location("stt-llm-gateway", "a/r1/out.json"),
    }
    assert sorted(u.reason for u in plan.unsafe) == [UnsafeReason.NOT_A_URI] * 2


def test_objects_under_a_planned_prefix_are_not_listed_twice(rules: Rules) -> None:
    image = {
        "request_id": "r1",
        "account_id": "a",
        "input_url": "s3://stt-llm-gateway/a/r1/in.json",
    }
    plan = resolve("llm_requests", rules.tables["llm_requests"], image)
    assert plan.objects == ()
    assert plan.prefixes == (S3Location("stt-llm-gateway", "a/r1/"),)


def test_an_empty_link_value_is_refused(rules: Rules) -> None:
    plan = resolve("transcripts", rules.tables["transcripts"], {**IMAGE, "transcript_id": "ok"})
    assert len(plan.links) == 2
    table = rules.tables["transcripts"]
    link = table.links[0].model_copy(update={"value_from": "language"})
    plan = resolve("transcripts", table.model_copy(update={"links": (link,)}), {**IMAGE, "language": ""})
    assert plan.links == ()
    assert [u.reason for u in plan.unsafe] == [UnsafeReason.LINK_VALUE]


# --- the scope property -----------------------------------------------------------------------------

SAFE = re.compile(r"[A-Za-z0-9_.:@+=,-]{1,256}")
tokens = st.sampled_from(
    ["acct-1", "acct-2", "tr-1", "tr-2", "r1", "..", ".", "", "*", "?", "a/b", "tr-1/..", " "]
)
identifiers = st.one_of(tokens, st.text(max_size=12), st.integers(-5, 10**6).map(decimal.Decimal), st.none())
buckets = st.sampled_from(
    ["stt-uploads", "stt-transcripts", "stt-understanding", "stt-llm-gateway", "evil", "Bad"]
)
segments = st.one_of(tokens, st.text(alphabet="ab./*\\%\x00 ", max_size=5))
uris = st.builds(
    lambda scheme, bucket, parts: f"{scheme}{bucket}/" + "/".join(parts),
    st.sampled_from(["s3://", "s3:/", "S3://", "https://", ""]),
    buckets,
    st.lists(segments, max_size=5),
)
uri_values = st.one_of(
    uris, st.lists(uris, max_size=3), st.dictionaries(st.text(max_size=3), uris, max_size=3)
)
images = st.fixed_dictionaries(
    {"transcript_id": identifiers, "account_id": identifiers, "request_id": identifiers},
    optional={"audio_url": uri_values, "input_url": uri_values, "output_url": uri_values},
)


def _text(value: object) -> str | None:
    """The test's own reading of an identifier: a safe string token or an integral number."""
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        value = str(int(value))
    if isinstance(value, str) and SAFE.fullmatch(value) and ".." not in value and value != ".":
        return value
    return None


@settings(max_examples=600)
@given(images)
@example(
    {
        "transcript_id": "tr-1",
        "account_id": "acct-1",
        "request_id": None,
        "audio_url": "s3://stt-uploads/acct-1/tr-1/../../acct-2/x",
    }
)
@example(
    {
        "transcript_id": "..",
        "account_id": "acct-1",
        "request_id": None,
        "audio_url": "s3://stt-uploads/acct-1/../x",
    }
)
def test_no_image_produces_a_target_outside_its_own_scope(rules: Rules, image: dict[str, object]) -> None:
    own = {
        "transcripts": [
            ("stt-uploads", ("account_id", "transcript_id")),
            ("stt-transcripts", ("account_id", "transcript_id")),
        ],
        "speech_outputs": [("stt-understanding", ("account_id", "transcript_id"))],
        "llm_requests": [("stt-llm-gateway", ("account_id", "request_id"))],
    }
    for table, scopes in own.items():
        plan = resolve(table, rules.tables[table], image)
        targets = [*plan.objects, *plan.prefixes]
        for target in targets:
            assert target.bucket in rules.buckets
            allowed = []
            for bucket, names in scopes:
                texts = [_text(image.get(n)) for n in names]
                assert None not in texts, f"{target} planned although an identifier is unsafe"
                allowed.append((bucket, "/".join(t for t in texts if t) + "/"))
            assert any(target.bucket == b and target.key.startswith(p) for b, p in allowed), target
            assert ".." not in target.key.split("/"), target
            assert "" not in target.key.split("/")[:-1], target
    # And the other side: with safe identifiers the transcript's own prefix is always planned.
    account, transcript = _text(image["account_id"]), _text(image["transcript_id"])
    if account and transcript:
        plan = resolve("transcripts", rules.tables["transcripts"], image)
        assert S3Location("stt-transcripts", f"{account}/{transcript}/") in plan.prefixes


def test_a_version_qualified_uri_plans_the_object_it_names_and_the_literal_key(rules: Rules) -> None:
    """s3://b/k?versionId=V names a version of k (every version of a target goes); k?versionId=V is also a
    legal literal key, so both are planned, each checked against the scope."""
    image = {**IMAGE, "audio_url": "s3://stt-uploads/acct-1/tr-1/audio.wav?versionId=3HL4kqtJlcpXroDTDmJ"}
    plan = resolve("transcripts", rules.tables["transcripts"], image)
    assert plan.objects == (
        S3Location("stt-uploads", "acct-1/tr-1/audio.wav?versionId=3HL4kqtJlcpXroDTDmJ"),
        S3Location("stt-uploads", "acct-1/tr-1/audio.wav"),
    )
    assert plan.is_safe


def test_a_fragment_or_another_query_is_part_of_the_key(rules: Rules) -> None:
    for key in ("acct-1/tr-1/audio.wav#t=10", "acct-1/tr-1/TENANT#acme/a.wav", "acct-1/tr-1/a.wav?x=1"):
        plan = resolve(
            "transcripts", rules.tables["transcripts"], {**IMAGE, "audio_url": f"s3://stt-uploads/{key}"}
        )
        assert plan.objects == (S3Location("stt-uploads", key),), key


def test_a_version_query_cannot_carry_a_target_out_of_scope(rules: Rules) -> None:
    image = {**IMAGE, "audio_url": "s3://stt-uploads/acct-1/tr-2?versionId=x"}
    plan = resolve("transcripts", rules.tables["transcripts"], image)
    assert plan.objects == ()
    assert [u.target for u in plan.unsafe] == [
        "s3://stt-uploads/acct-1/tr-2?versionId=x",
        "s3://stt-uploads/acct-1/tr-2",
    ]


async def test_a_version_qualified_uri_deletes_every_version_of_the_object_it_names(world: World) -> None:
    world.add_transcript("acct-1", "tr-1", versions=3)
    image = {
        **world.image("acct-1", "tr-1"),
        "audio_url": "s3://stt-uploads/acct-1/tr-1/audio.wav?versionId=v2",
    }
    plan = resolve("transcripts", world.rules.tables["transcripts"], image)
    result = await world.executor.execute(plan)
    assert result.errors == []
    assert world.artifacts.keys("stt-uploads") == set()
    assert result.tally.object_versions >= 3
    assert world.sample("reconciler_artifacts_total", kind="object", outcome="absent") == 1  # the literal key
