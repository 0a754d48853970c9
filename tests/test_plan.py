"""An old image resolves to a scope-checked plan; no image, however crafted, yields a target outside scope."""

from __future__ import annotations

import decimal
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import pytest
from conftest import World
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconciler.core.plan import DeletionPlan, LinkQuery, Unsafe, UnsafeReason, readings, resolve
from reconciler.core.scope import S3Location, ScopeViolation, Template, identifier_text
from reconciler.core.spec import EntitySpec, LinkSpec, ScopeMode, TableSpec
from reconciler.rules import Rules, load_rules

IMAGE = {
    "transcript_id": "tr-1",
    "account_id": "acct-1",
    "expires_at": decimal.Decimal(1764000000),
    "audio_url": "s3://stt-uploads/acct-1/tr-1/audio.wav",
}


def _changed(rules: Rules, table: str, **changes: object) -> TableSpec:
    """``table``'s compiled rules with ``changes`` to its entry in the rules file."""
    data = rules.model_dump()
    data["tables"][table].update(changes)
    for spec in data["tables"].values():
        spec["created_attribute"] = None  # it dates linked items only, and the changes may unlink a table
    return Rules.model_validate(data).compile().tables[table]


def test_a_clean_image_plans_its_objects_prefixes_and_links(rules: Rules) -> None:
    plan = resolve(rules.compile().tables["transcripts"], IMAGE)
    assert plan.is_safe
    assert plan.key == {"transcript_id": "tr-1"}
    assert plan.objects == (S3Location("stt-uploads", "acct-1/tr-1/audio.wav"),)
    assert plan.prefixes == (S3Location("stt-transcripts", "acct-1/tr-1/"),)
    assert plan.links == (
        LinkQuery(
            "speech_outputs",
            "transcript_id",
            "tr-1",
            None,
            scope=ScopeMode.PARENT,
            inherited=(S3Location("stt-understanding", "acct-1/tr-1/"),),
        ),
        LinkQuery("llm_requests", "transcript_id", "tr-1", "by_transcript"),
    )


def test_a_uri_outside_scope_is_refused_and_the_rest_still_planned(rules: Rules) -> None:
    image = {**IMAGE, "audio_url": "s3://stt-uploads/acct-1/tr-2/audio.wav"}  # another transcript's audio
    plan = resolve(rules.compile().tables["transcripts"], image)
    assert plan.objects == ()
    assert [u.reason for u in plan.unsafe] == [UnsafeReason.OUT_OF_SCOPE]
    assert plan.unsafe[0].target == "s3://stt-uploads/acct-1/tr-2/audio.wav"
    assert plan.prefixes == (S3Location("stt-transcripts", "acct-1/tr-1/"),)


def test_a_traversal_inside_a_uri_is_refused(rules: Rules) -> None:
    image = {**IMAGE, "audio_url": "s3://stt-uploads/acct-1/tr-1/../tr-2/audio.wav"}
    plan = resolve(rules.compile().tables["transcripts"], image)
    assert plan.objects == ()
    assert [u.reason for u in plan.unsafe] == [UnsafeReason.OUT_OF_SCOPE]


@pytest.mark.parametrize(
    "bad",
    ["../tr-2", "tr-1/../../x", "a/b", "", ".", "..", "tr\x00", "tr\x1f1", "tr\x851", "tr\ud800",
     "\u00e9" * 513, decimal.Decimal("1.5"), decimal.Decimal("Infinity"), None, True],
)  # fmt: skip
def test_an_identifier_that_could_change_a_paths_meaning_leaves_nothing_executable(
    rules: Rules, bad: object
) -> None:
    image = {**IMAGE, "transcript_id": bad}
    plan = resolve(rules.compile().tables["transcripts"], image)
    assert not plan.has_work
    assert plan.blocked
    assert [u.reason for u in plan.unsafe] == [UnsafeReason.IDENTIFIER]


@pytest.mark.parametrize(
    "identifier",
    ["JOB#906", "TENANT#acme", "50%", "~me", "a b", "a+b", "\u00fcber", "\u8a9e\u97f3", "\u05e9", "x" * 1024],
)
def test_ordinary_characters_of_a_key_segment_are_identifiers(rules: Rules, identifier: str) -> None:
    image = {**IMAGE, "transcript_id": identifier, "audio_url": f"s3://stt-uploads/acct-1/{identifier}/a.wav"}
    plan = resolve(rules.compile().tables["transcripts"], image)
    assert plan.is_safe
    assert plan.prefixes == (S3Location("stt-transcripts", f"acct-1/{identifier}/"),)
    assert plan.objects == (S3Location("stt-uploads", f"acct-1/{identifier}/a.wav"),)


def test_integer_identifiers_are_rendered_as_integers(rules: Rules) -> None:
    image = {**IMAGE, "account_id": decimal.Decimal(42), "audio_url": "s3://stt-uploads/42/tr-1/a.wav"}
    plan = resolve(rules.compile().tables["transcripts"], image)
    assert plan.is_safe
    assert S3Location("stt-transcripts", "42/tr-1/") in plan.prefixes


def test_uri_lists_and_maps_are_planned_and_non_uris_refused(rules: Rules) -> None:
    image = {
        "request_id": "r1",
        "account_id": "a",
        "input_url": ["s3://stt-llm-gateway/a/r1/in.json", "http://elsewhere/x"],
        "output_url": {"main": "s3://stt-llm-gateway/a/r1/out.json", "bad": decimal.Decimal(3)},
    }
    plan = resolve(_changed(rules, "llm_requests", prefixes=[]), image)
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
    plan = resolve(rules.compile().tables["llm_requests"], image)
    assert plan.objects == ()
    assert plan.prefixes == (S3Location("stt-llm-gateway", "a/r1/"),)


def test_an_empty_link_value_is_refused(rules: Rules) -> None:
    plan = resolve(rules.compile().tables["transcripts"], {**IMAGE, "transcript_id": "ok"})
    assert len(plan.links) == 2
    link = {"table": "llm_requests", "attribute": "transcript_id", "value_from": "language", "index": "i"}
    speech = rules.model_dump()["tables"]["transcripts"]["links"][0]  # speech outputs keep their link
    plan = resolve(_changed(rules, "transcripts", links=[speech, link]), {**IMAGE, "language": ""})
    assert [q.table for q in plan.links] == ["speech_outputs"]
    assert [u.reason for u in plan.unsafe] == [UnsafeReason.LINK_VALUE]


# --- the scope property -----------------------------------------------------------------------------

tokens = st.sampled_from(
    ["acct-1", "acct-2", "tr-1", "tr-2", "r1", "..", ".", "", "*", "?", "a/b", "tr-1/..", " ", "JOB#906",
     "TENANT#acme", "50%", "~x", "a+b", "\u00fcber", "\ud800", "x\x00", "\u0085", "tr-1/"]
)  # fmt: skip
# Every code point, surrogates and controls included, and integers as DynamoDB numbers.
unicode_text = st.text(st.characters(exclude_categories=()), max_size=12)
identifiers = st.one_of(tokens, unicode_text, st.integers(-5, 10**6).map(decimal.Decimal), st.none())
buckets = st.sampled_from(
    ["stt-uploads", "stt-transcripts", "stt-understanding", "stt-llm-gateway", "evil", "Bad"]
)
segments = st.one_of(tokens, st.text(alphabet="ab./*\\%\x00 #?", max_size=5), unicode_text)
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
    """The test's own reading of an identifier: a string (or an integral number) that is one whole path
    segment: not empty, '.' or '..', no '/', no control character or surrogate, at most 1,024 bytes."""
    if isinstance(value, decimal.Decimal) and value.is_finite() and value == value.to_integral_value():
        value = str(int(value))
    if not isinstance(value, str) or value in {"", ".", ".."} or "/" in value:
        return None
    if any(unicodedata.category(ch) in {"Cc", "Cs"} for ch in value):
        return None
    return value if len(value.encode()) <= 1024 else None


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
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
        plan = resolve(rules.compile().tables[table], image)
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
        plan = resolve(rules.compile().tables["transcripts"], image)
        assert S3Location("stt-transcripts", f"{account}/{transcript}/") in plan.prefixes


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(identifiers, identifiers, identifiers, identifiers)
def test_two_different_items_never_render_the_same_prefix(
    rules: Rules, account_a: object, transcript_a: object, account_b: object, transcript_b: object
) -> None:
    """The prefix names the item: everything under it is deleted, so it must be one item's alone."""
    table = rules.compile().tables["transcripts"]
    a = resolve(table, {"account_id": account_a, "transcript_id": transcript_a})
    b = resolve(table, {"account_id": account_b, "transcript_id": transcript_b})
    if a.prefixes and a.prefixes == b.prefixes:
        assert (_text(account_a), _text(transcript_a)) == (_text(account_b), _text(transcript_b))


def test_a_version_qualified_uri_plans_the_object_it_names_and_the_literal_key(rules: Rules) -> None:
    """s3://b/k?versionId=V names a version of k (every version of a target goes); k?versionId=V is also a
    legal literal key, so both are planned, each checked against the scope."""
    image = {**IMAGE, "audio_url": "s3://stt-uploads/acct-1/tr-1/audio.wav?versionId=3HL4kqtJlcpXroDTDmJ"}
    plan = resolve(rules.compile().tables["transcripts"], image)
    assert plan.objects == (
        S3Location("stt-uploads", "acct-1/tr-1/audio.wav?versionId=3HL4kqtJlcpXroDTDmJ"),
        S3Location("stt-uploads", "acct-1/tr-1/audio.wav"),
    )
    assert plan.is_safe


def test_a_fragment_or_another_query_is_part_of_the_key(rules: Rules) -> None:
    for key in ("acct-1/tr-1/audio.wav#t=10", "acct-1/tr-1/TENANT#acme/a.wav", "acct-1/tr-1/a.wav?x=1"):
        plan = resolve(
            rules.compile().tables["transcripts"], {**IMAGE, "audio_url": f"s3://stt-uploads/{key}"}
        )
        assert plan.objects == (S3Location("stt-uploads", key),), key


def test_a_version_query_cannot_carry_a_target_out_of_scope(rules: Rules) -> None:
    image = {**IMAGE, "audio_url": "s3://stt-uploads/acct-1/tr-2?versionId=x"}
    plan = resolve(rules.compile().tables["transcripts"], image)
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
    plan = resolve(world.rules.tables["transcripts"], image)
    result = await world.executor.execute(plan)
    assert result.errors == []
    assert world.artifacts.keys("stt-uploads") == set()
    assert result.tally.object_versions >= 3
    assert world.sample("reconciler_artifacts_total", kind="object", outcome="absent") == 1  # the literal key


# --- single-table keys, parts of composite values, parent-scoped links -------------------------------

APP = load_rules(Path(__file__).parent / "rules" / "single_table.toml").compile()
TRANSCRIPT = {
    "PK": "JOB#906",
    "SK": "TRANSCRIPT",
    "tenant": "TENANT#acme",
    "ref": "acme#906",
    "audio_url": "s3://media/audio/acme/906/a.wav",
}


def _gateway_link(image: Mapping[str, object]) -> list[LinkQuery]:
    return [q for q in resolve(APP.tables["app"], image).links if q.table == "gateway"]


def test_a_part_after_a_marker_renders_and_a_value_without_it_renders_nothing() -> None:
    plan = resolve(APP.tables["app"], TRANSCRIPT)
    assert plan.is_safe
    assert plan.scopes == (S3Location("media", "audio/acme/906/"),)
    for bad in ("906", "X#JOB#906", "JOB#", "JOB#a/b"):
        plan = resolve(APP.tables["app"], {**TRANSCRIPT, "PK": bad})
        assert plan.blocked, bad
        assert not plan.has_work, bad


def test_a_parent_scoped_link_hands_on_scopes_rendered_from_the_parent() -> None:
    (query,) = _gateway_link(TRANSCRIPT)
    assert query.inherited == (S3Location("media", "llm/acme/906/"),)
    child = {"request_id": "r1", "job_ref": "JOB#906", "input_url": "s3://media/llm/acme/906/r1/in.json"}
    plan = resolve(APP.tables["gateway"], child, via=query)
    assert plan.objects == (S3Location("media", "llm/acme/906/r1/in.json"),)
    tampered = {**child, "input_url": "s3://media/llm/acme/907/r1/in.json"}  # a sibling job's file
    plan = resolve(APP.tables["gateway"], tampered, via=query)
    assert plan.objects == ()
    assert [u.reason for u in plan.unsafe] == [UnsafeReason.OUT_OF_SCOPE]


def _part(value: object, marker: str) -> str | None:
    text = _text(value)
    return _text(text[len(marker) :]) if text is not None and text.startswith(marker) else None


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.one_of(identifiers, identifiers.map(lambda v: f"TENANT#{v}")),
    st.one_of(identifiers, identifiers.map(lambda v: f"JOB#{v}")),
    uri_values,
)
def test_no_parent_scoped_child_reaches_outside_its_parents_scope(
    tenant: object, job: object, uri: object
) -> None:
    parent = {**TRANSCRIPT, "tenant": tenant, "PK": job}
    links = _gateway_link(parent)
    tenant_part, job_part = _part(tenant, "TENANT#"), _part(job, "JOB#")
    if tenant_part is None or job_part is None:
        assert links == []  # no scope, so nothing linked is planned either
        return
    (query,) = links
    plan = resolve(APP.tables["gateway"], {"request_id": "r1", "input_url": uri}, via=query)
    for target in plan.objects:
        assert target.bucket == "media"
        assert target.key.startswith(f"llm/{tenant_part}/{job_part}/"), target


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(identifiers, identifiers, identifiers, identifiers)
def test_two_items_never_render_the_same_scope_through_parts(
    t1: object, j1: object, t2: object, j2: object
) -> None:
    table = APP.tables["app"]
    first, second = (f"TENANT#{t1}", f"JOB#{j1}"), (f"TENANT#{t2}", f"JOB#{j2}")
    a = resolve(table, {**TRANSCRIPT, "tenant": first[0], "PK": first[1]})
    b = resolve(table, {**TRANSCRIPT, "tenant": second[0], "PK": second[1]})
    if a.scopes and a.scopes == b.scopes:
        assert first == second


# --- what mutation testing showed untested ------------------------------------------------------------


def test_a_sort_key_link_carries_its_prefix_and_entity_into_the_query() -> None:
    table = load_rules(Path(__file__).parent / "rules" / "single_table.toml").compile().tables["app"]
    (outputs,) = [q for q in resolve(table, TRANSCRIPT).links if q.table == "app"]
    assert (outputs.attribute, outputs.value, outputs.index) == ("PK", "JOB#906", None)
    assert (outputs.sort_attribute, outputs.sort_prefix, outputs.entity) == ("SK", "OUTPUT#", "output")
    assert outputs.scope is ScopeMode.OWN


def test_a_parent_link_without_scopes_hands_on_the_parents_own(rules: Rules) -> None:
    link = {
        "table": "speech_outputs",
        "attribute": "transcript_id",
        "value_from": "transcript_id",
        "scope": "parent",
    }
    table = _changed(rules, "transcripts", links=[link])
    (query,) = resolve(table, IMAGE).links
    assert query.inherited == resolve(table, IMAGE).scopes
    assert query.inherited


def test_a_link_whose_parent_scopes_cannot_render_is_refused_by_name() -> None:
    parent = {**TRANSCRIPT, "tenant": "ACME"}  # no TENANT# marker: the link's scope cannot render
    plan = resolve(APP.tables["app"], {**parent, "audio_url": None})
    assert plan.blocked  # the transcript's own scope needs the marker too


def test_a_both_scoped_child_may_use_its_own_scope_or_its_parents() -> None:
    parent_scope = S3Location("media", "llm/acme/906/")
    own = Template.parse("s3://media/own/{id}/")
    table = TableSpec("c", ("id",), entities=(EntitySpec("", scopes=(own,), object_attributes=("u",)),))
    via = LinkQuery("c", "job", "x", None, scope=ScopeMode.BOTH, inherited=(parent_scope,))
    for uri in ("s3://media/own/c1/a", "s3://media/llm/acme/906/b"):
        plan = resolve(table, {"id": "c1", "u": uri}, via=via)
        assert plan.objects == (S3Location.parse(uri),), uri
    assert resolve(table, {"id": "c1", "u": "s3://media/llm/acme/907/b"}, via=via).objects == ()
    only_parent = LinkQuery("c", "job", "x", None, scope=ScopeMode.PARENT, inherited=(parent_scope,))
    assert resolve(table, {"id": "c1", "u": "s3://media/own/c1/a"}, via=only_parent).objects == ()


def test_an_item_of_no_described_kind_plans_nothing_but_keeps_its_name() -> None:
    plan = resolve(APP.tables["app"], {"PK": "JOB#906", "SK": "NOTE#1"})
    assert (plan.table, plan.key) == ("app", {"PK": "JOB#906", "SK": "NOTE#1"})
    assert not plan.has_work
    assert plan.is_safe


def test_a_key_that_is_only_a_version_query_is_taken_literally() -> None:
    location = S3Location("b", "?versionId=x")
    assert readings(location) == (location,)
    assert readings(S3Location("b", "k?versionId=x")) == (
        location.__class__("b", "k?versionId=x"),
        S3Location("b", "k"),
    )


def test_parts_render_inside_a_test_as_they_do_when_loaded() -> None:
    template = Template.parse("s3://bkt/{PK|after:JOB#}/{parent.tenant|after:T#}/")
    assert template.render({"PK": "JOB#9"}, parent={"tenant": "T#acme"}) == S3Location("bkt", "9/acme/")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ({"id": "a\x01"}, "identifier 'id' holds a control character or an unpaired surrogate"),
        ({"id": "x" * 1025}, "identifier 'id' is longer than an S3 key"),
        ({"id": "NOPE"}, "identifier 'id' does not start with its marker"),
    ],
)
def test_identifier_refusals_say_why(image: dict[str, object], message: str) -> None:
    marker = "J#" if image["id"] == "NOPE" else None
    with pytest.raises(ScopeViolation, match=message):
        identifier_text("id", image, marker)


def test_a_parent_placeholder_without_a_parent_is_refused_by_name() -> None:
    with pytest.raises(ScopeViolation, match=r"\{parent.tenant\} has no parent item to render from"):
        Template.parse("s3://bkt/{parent.tenant}/").render({})


def test_a_link_whose_own_scopes_cannot_render_from_the_parent_is_refused_by_name() -> None:
    link = LinkSpec(
        "c", "p", "id", scope=ScopeMode.PARENT, scopes=(Template.parse("s3://bkt/{parent.x|after:M#}/"),)
    )
    parent = TableSpec(
        "p", ("id",), entities=(EntitySpec("", scopes=(Template.parse("s3://bkt/{id}/"),), links=(link,)),)
    )
    plan = resolve(parent, {"id": "p1", "x": "no-marker"})
    assert plan.links == ()
    assert plan.unsafe == (
        Unsafe("link to c", UnsafeReason.IDENTIFIER, "identifier 'x' does not start with its marker"),
    )


def test_an_item_of_no_described_kind_has_an_empty_plan() -> None:
    key = {"PK": "JOB#906", "SK": "NOTE#1"}
    assert resolve(APP.tables["app"], key) == DeletionPlan("app", key, (), (), (), (), ())


def test_a_parent_scoped_child_does_not_need_its_own_scopes_to_render() -> None:
    own = Template.parse("s3://bkt/own/{missing}/")
    table = TableSpec("c", ("id",), entities=(EntitySpec("", scopes=(own,), object_attributes=("u",)),))
    via = LinkQuery("c", "p", "x", None, scope=ScopeMode.PARENT, inherited=(S3Location("bkt", "p/x/"),))
    plan = resolve(table, {"id": "c1", "u": "s3://bkt/p/x/f"}, via=via)
    assert plan.objects == (S3Location("bkt", "p/x/f"),)
    assert not plan.blocked
