"""An S3 object maps back to the items whose scope holds it (the orphan sweep's pure core): exactly, segment
by segment, and when no single item can be named the answer says so instead of guessing."""

from __future__ import annotations

import decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import iam
from reconciler.core.plan import LinkQuery, resolve
from reconciler.core.reverse import (
    KeyType,
    Owner,
    OwnerIndex,
    Ownership,
    Unresolvable,
    UnresolvableReason,
    owners,
    walk_roots,
)
from reconciler.core.scope import S3Location, Template
from reconciler.core.spec import EntitySpec, LinkSpec, RuleSet, ScopeMode, TableSpec
from reconciler.rules import Rules, load_rules

ROOT = Path(__file__).parent.parent
EXAMPLE = load_rules(ROOT / "deploy" / "example" / "rules.toml")
SINGLE_TABLE = load_rules(ROOT / "tests" / "rules" / "single_table.toml")
STRINGS = {
    "transcripts": {"transcript_id": KeyType.STRING},
    "speech_outputs": {"transcript_id": KeyType.STRING, "output_type": KeyType.STRING},
    "llm_requests": {"request_id": KeyType.STRING},
    "app": {"PK": KeyType.STRING, "SK": KeyType.STRING},
}
SETTINGS = settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def _owners(found: list[Ownership]) -> list[tuple[str, dict[str, object]]]:
    return [(o.table, dict(o.key)) for o in found if isinstance(o, Owner)]


def _reasons(found: list[Ownership]) -> list[UnresolvableReason]:
    return [o.reason for o in found if isinstance(o, Unresolvable)]


def _single(entity: str, table: str, *, key: tuple[str, ...], scopes: tuple[str, ...]) -> RuleSet:
    """A one-table rule set whose entity ``entity`` has ``scopes``, built without the rules file."""
    spec = EntitySpec(entity, scopes=tuple(map(Template.parse, scopes)), object_attributes=("url",))
    return RuleSet.of(frozenset({"bkt"}), (table,), {table: TableSpec(table, key, entities=(spec,))})


@pytest.mark.parametrize(
    ("bucket", "key", "table", "item_key"),
    [
        ("stt-uploads", "acct-1/tr-1/audio.wav", "transcripts", {"transcript_id": "tr-1"}),
        ("stt-transcripts", "acct-1/tr-1/parts/0.json", "transcripts", {"transcript_id": "tr-1"}),
        ("stt-transcripts", "acct-1/tr-1/", "transcripts", {"transcript_id": "tr-1"}),
        ("stt-llm-gateway", "acct-1/tr-1#llm0/input.json", "llm_requests", {"request_id": "tr-1#llm0"}),
    ],
)
def test_an_orphan_candidate_of_the_demo_maps_to_the_item_whose_scope_holds_it(
    rules: Rules, bucket: str, key: str, table: str, item_key: dict[str, object]
) -> None:
    found = owners(rules.compile(), bucket, key)
    assert _owners(found) == [(table, item_key)]
    assert not _reasons(found)
    owner = found[0]
    assert isinstance(owner, Owner)
    assert owner.item_key == item_key
    assert S3Location(bucket, key).is_within(owner.scope)


def test_an_orphan_under_a_links_scope_belongs_to_the_parent_not_the_child(rules: Rules) -> None:
    """speech_outputs keep their files under the transcript's scope: the transcript owns them."""
    found = owners(rules.compile(), "stt-understanding", "acct-1/tr-1/translation/de.json")
    assert found == [
        Owner(
            "transcripts",
            "",
            (("transcript_id", "tr-1"),),
            "s3://stt-understanding/{parent.account_id}/{parent.transcript_id}/",
            S3Location("stt-understanding", "acct-1/tr-1/"),
        )
    ]


@pytest.mark.parametrize(
    "key",
    [
        "acct-1/9070/audio.wav",  # a sibling whose identifier begins like 907
        "acct-1/907",  # the scope is acct-1/907/: an object named like the folder is not under it
        "acct-1/907x/a",
        "acct-1//907/a",  # an empty segment is no identifier
        "acct-1/./a",
        "acct-1",
        "",
    ],
)
def test_an_orphan_key_that_only_begins_like_an_items_scope_is_not_that_items(rules: Rules, key: str) -> None:
    found = owners(rules.compile(), "stt-uploads", key, STRINGS)
    assert ("transcripts", {"transcript_id": "907"}) not in _owners(found)


def test_an_orphan_in_a_bucket_no_rule_names_has_no_owner(rules: Rules) -> None:
    assert owners(rules.compile(), "elsewhere", "acct-1/tr-1/audio.wav") == []


def test_an_orphan_key_with_a_dot_dot_segment_is_reported_not_mapped(rules: Rules) -> None:
    found = owners(rules.compile(), "stt-uploads", "acct-1/tr-1/../tr-2/audio.wav")
    assert found == [
        Unresolvable(
            "transcripts",
            "",
            "s3://stt-uploads/{account_id}/{transcript_id}/",
            UnresolvableReason.UNSAFE_KEY,
            "the key has an empty, '.' or '..' segment or a control character",
        )
    ]


def test_an_orphan_whose_identifier_reads_as_a_number_needs_the_key_type(rules: Rules) -> None:
    """'907' renders from the string "907" and the number 907 alike: the answer depends on the table."""
    compiled, key = rules.compile(), "acct-1/907/audio.wav"
    assert owners(compiled, "stt-uploads", key) == [
        Unresolvable(
            "transcripts",
            "",
            "s3://stt-uploads/{account_id}/{transcript_id}/",
            UnresolvableReason.KEY_TYPE,
            "key attribute 'transcript_id' reads as a string or a number; its type was not given",
        )
    ]
    assert _owners(owners(compiled, "stt-uploads", key, STRINGS)) == [
        ("transcripts", {"transcript_id": "907"})
    ]
    numbers = {"transcripts": {"transcript_id": KeyType.NUMBER}}
    [(_, item_key)] = _owners(owners(compiled, "stt-uploads", key, numbers))
    assert item_key == {"transcript_id": decimal.Decimal(907)}
    assert isinstance(item_key["transcript_id"], decimal.Decimal)
    # No number renders as "0907", and no binary value renders at all.
    assert owners(compiled, "stt-uploads", "acct-1/0907/a", numbers) == []
    # Nor does any number render with 39 significant digits, or 127 digits: such a segment is a string.
    for text in ("1" * 39, "1" + "0" * 126):
        assert owners(compiled, "stt-uploads", f"acct-1/{text}/a", numbers) == []
        [(_, item_key)] = _owners(owners(compiled, "stt-uploads", f"acct-1/{text}/a"))
        assert item_key == {"transcript_id": text}
    for text in ("1" * 38, "-" + "9" * 38, "1" + "0" * 125, "-1" + "0" * 125):  # DynamoDB's limits
        [(_, item_key)] = _owners(owners(compiled, "stt-uploads", f"acct-1/{text}/a", numbers))
        assert item_key == {"transcript_id": decimal.Decimal(text)}
    binary = {"transcripts": {"transcript_id": KeyType.BINARY}}
    assert owners(compiled, "stt-uploads", key, binary) == []


def test_an_orphan_under_a_template_without_the_whole_key_is_reported_never_guessed() -> None:
    """The example's speech outputs are keyed by (transcript_id, output_type); their scope names only the
    transcript, so an object under it could be any of its outputs'."""
    found = owners(EXAMPLE.compile(), "stt-understanding", "outputs/acct-1/tr-1/de.json", STRINGS)
    assert found == [
        Unresolvable(
            "speech_outputs",
            "",
            "s3://stt-understanding/outputs/{account_id}/{transcript_id}/",
            UnresolvableReason.PARTIAL_KEY,
            "the template does not name key attribute(s) output_type",
        )
    ]


def test_an_orphan_under_a_template_naming_no_key_attribute_reports_them_all() -> None:
    compiled = _single("", "t", key=("PK", "SK"), scopes=("s3://bkt/x/{tenant}/",))
    [found] = owners(compiled, "bkt", "x/acme/a")
    assert isinstance(found, Unresolvable)
    assert found.detail == "the template does not name key attribute(s) PK, SK"


@pytest.mark.parametrize(
    ("key", "entity"),
    [
        ("audio/acme/906/a.wav", "transcript"),
        ("outputs/acme/906/de.json", "output"),
        ("llm/acme/906/req-1/input.json", "transcript"),  # the gateway link's scope: the transcript's
    ],
)
def test_an_orphan_of_the_single_table_example_is_reported_because_no_scope_names_the_sort_key(
    key: str, entity: str
) -> None:
    found = owners(SINGLE_TABLE.compile(), "media", key, STRINGS)
    assert [(o.table, o.entity, o.reason) for o in found if isinstance(o, Unresolvable)] == [
        ("app", entity, UnresolvableReason.PARTIAL_KEY)
    ]
    assert not _owners(found)


def _with_sort_key_in_scopes() -> RuleSet:
    data = SINGLE_TABLE.model_dump()
    entities = data["tables"]["app"]["entities"]
    entities["transcript"]["scopes"] = ["s3://media/audio/{tenant|after:TENANT#}/{PK|after:JOB#}/{SK}/"]
    entities["output"]["scopes"] = [
        "s3://media/outputs/{tenant|after:TENANT#}/{PK|after:JOB#}/{SK|after:OUTPUT#}/"
    ]
    return Rules.model_validate(data).compile()


def test_an_orphan_under_composite_parts_maps_to_the_whole_values_markers_included() -> None:
    found = owners(_with_sort_key_in_scopes(), "media", "outputs/acme/906/de/seg-1.json", STRINGS)
    assert _owners(found) == [("app", {"PK": "JOB#906", "SK": "OUTPUT#de"})]
    assert [o.entity for o in found] == ["output"]


def test_an_orphan_key_an_entity_could_not_have_rendered_is_not_that_entitys() -> None:
    """Under the transcript's template, SK 'OUTPUT#de' names an output, which that template never renders."""
    compiled = _with_sort_key_in_scopes()
    assert owners(compiled, "media", "audio/acme/906/OUTPUT#de/a.wav", STRINGS) == []
    found = owners(compiled, "media", "audio/acme/906/TRANSCRIPT/a.wav", STRINGS)
    assert _owners(found) == [("app", {"PK": "JOB#906", "SK": "TRANSCRIPT"})]


def test_an_orphan_under_a_template_ending_in_a_placeholder_is_reported() -> None:
    """s3://bkt/x/{id} renders x/907, which also holds x/9070/...: the identifier cannot be told."""
    compiled = _single("", "t", key=("id",), scopes=("s3://bkt/x/{id}",))
    found = owners(compiled, "bkt", "x/9070/a", {"t": {"id": KeyType.STRING}})
    assert found == [
        Unresolvable(
            "t",
            "",
            "s3://bkt/x/{id}",
            UnresolvableReason.OPEN_ENDED,
            "the template ends with a placeholder, not '/'",
        )
    ]


def test_an_orphan_under_a_template_naming_an_attribute_twice_needs_both_to_agree() -> None:
    compiled = _single("", "t", key=("id",), scopes=("s3://bkt/{id}/copy/{id|after:v-}/",))
    types = {"t": {"id": KeyType.STRING}}
    assert _owners(owners(compiled, "bkt", "v-1/copy/1/a", types)) == [("t", {"id": "v-1"})]
    assert owners(compiled, "bkt", "v-1/copy/2/a", types) == []


def test_an_orphan_index_answers_like_the_one_shot_function(rules: Rules) -> None:
    index = OwnerIndex.of(rules.compile(), STRINGS)
    for bucket, key in [("stt-uploads", "a/b/c"), ("stt-understanding", "a/b/"), ("x", "y")]:
        assert index.owners(bucket, key) == owners(rules.compile(), bucket, key, STRINGS)


# Walk roots.


def test_orphan_walk_roots_are_the_iam_policys_static_prefixes() -> None:
    for rules in (EXAMPLE, SINGLE_TABLE):
        roots = walk_roots(rules.compile())
        assert {b: list(p) for b, p in roots.items()} == iam.scope_prefixes(rules)
    assert walk_roots(SINGLE_TABLE.compile()) == {"media": ("audio/", "llm/", "outputs/")}


def test_orphan_walk_roots_cover_a_whole_bucket_when_a_scope_starts_with_a_placeholder(rules: Rules) -> None:
    assert walk_roots(rules.compile()) == dict.fromkeys(sorted(rules.buckets), ("",))


def test_orphan_walk_roots_leave_out_prefixes_under_another_segment_by_segment() -> None:
    entity = EntitySpec(
        "",
        scopes=tuple(
            map(
                Template.parse,
                ["s3://bkt/a/{id}/", "s3://bkt/a/b/{id}/", "s3://bkt/ab/{id}/", "s3://ccc/a/{id}/"],
            )
        ),
    )
    compiled = RuleSet.of(
        frozenset({"bkt", "ccc"}), ("t",), {"t": TableSpec("t", ("id",), entities=(entity,))}
    )
    assert walk_roots(compiled) == {"bkt": ("a/", "ab/"), "ccc": ("a/",)}


# Properties.

identifiers = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/"), min_size=1, max_size=8
).filter(lambda s: s not in {".", ".."})
texts = identifiers | st.integers(-(10**6), 10**6).map(str)
# DynamoDB numbers that render as segments: up to 38 significant digits, up to 126 digits in full.
numbers = (
    st.integers(-(10**38) + 1, 10**38 - 1)
    | st.tuples(st.integers(-99, 99), st.integers(0, 124)).map(lambda t: t[0] * 10 ** t[1])
).map(decimal.Decimal)
suffixes = st.lists(identifiers, max_size=3).map(lambda segments: "".join(f"{s}/" for s in segments))


@st.composite
def layouts(draw: st.DrawFn) -> tuple[RuleSet, dict[str, KeyType], dict[str, object]]:
    """A table with a string or number key of one or two attributes, one scope template naming them (whole
    or after a marker, in any order, between literal segments, perhaps with another attribute), and an item
    image the template renders."""
    key = draw(st.sampled_from([("PK",), ("PK", "SK")]))
    types = {name: draw(st.sampled_from(list(KeyType)[:2])) for name in key}
    names = [*key, *draw(st.sampled_from([[], ["tenant"]]))]
    segments: list[str] = []
    image: dict[str, object] = {}
    for name in draw(st.permutations(names)):
        segments += draw(st.lists(st.sampled_from(["a", "bkt", "x#y", "9"]), max_size=2))
        if types.get(name) is KeyType.NUMBER:
            segments.append(f"{{{name}}}")
            image[name] = draw(numbers)
            continue
        marker = draw(st.sampled_from(["", "JOB#", "9"]))
        segments.append(f"{{{name}|after:{marker}}}" if marker else f"{{{name}}}")
        image[name] = marker + draw(texts)
    segments += draw(st.lists(st.sampled_from(["a", "out"]), max_size=1))
    compiled = _single("", "t", key=key, scopes=("s3://bkt/" + "/".join(segments) + "/",))
    return compiled, types, image


def _planned(table: TableSpec, image: dict[str, Any], via: LinkQuery | None = None) -> list[S3Location]:
    plan = resolve(table, image, via)
    assert plan.is_safe, plan.unsafe
    return [*plan.objects, *plan.prefixes]


@SETTINGS
@given(layouts(), suffixes)
def test_every_planned_object_maps_back_to_its_item_as_orphan_candidate_under_a_walk_root(
    layout: tuple[RuleSet, dict[str, KeyType], dict[str, object]], suffix: str
) -> None:
    compiled, types, image = layout
    table = compiled.tables["t"]
    scope = table.entities[0].scopes[0].render(image)
    planned = _planned(table, {**image, "url": f"{scope}{suffix}"})
    assert planned
    item_key = {name: image[name] for name in table.key}
    for target in planned:
        found = owners(compiled, target.bucket, target.key, {"t": types})
        assert _owners(found) == [("t", item_key)], target
        assert any(target.key.startswith(root) for root in walk_roots(compiled)[target.bucket])
        # Without the key's types: the same owner, or a report that the type is needed; never another item.
        untyped = owners(compiled, target.bucket, target.key)
        assert untyped == found or _reasons(untyped) == [UnresolvableReason.KEY_TYPE]


@SETTINGS
@given(layouts(), st.data())
def test_an_orphan_of_a_sibling_whose_identifier_begins_alike_never_maps_to_the_item(
    layout: tuple[RuleSet, dict[str, KeyType], dict[str, object]], data: st.DataObject
) -> None:
    """907 and 9070 (or JOB#ab and JOB#abc): each item's objects map to it alone."""
    compiled, types, image = layout
    table = compiled.tables["t"]
    name = data.draw(st.sampled_from(table.key))
    sibling = dict(image)
    if types[name] is KeyType.NUMBER:
        sibling[name] = decimal.Decimal(str(image[name])) * 10 + data.draw(st.integers(1, 9))
    else:
        sibling[name] = f"{image[name]}{data.draw(identifiers)}"
    item_key = {n: image[n] for n in table.key}
    sibling_key = {n: sibling[n] for n in table.key}
    template = table.entities[0].scopes[0]
    for mine, theirs in ((item_key, sibling), (sibling_key, image)):
        target = template.render(theirs)
        found = owners(compiled, target.bucket, f"{target.key}a.json", {"t": types})
        assert ("t", mine) not in _owners(found)


@SETTINGS
@given(identifiers, texts, identifiers, suffixes)
def test_every_demo_orphan_candidate_maps_back_to_the_item_that_holds_its_scope(
    rules: Rules, account: str, transcript: str, output: str, suffix: str
) -> None:
    """A transcript's own objects are its; a speech output's, under the transcript's scope, are the
    transcript's too; an LLM request's are the request's."""
    compiled = rules.compile()
    tables = compiled.tables
    parent = {"account_id": account, "transcript_id": transcript}
    audio = f"s3://stt-uploads/{account}/{transcript}/{suffix}a.wav"
    child = {"transcript_id": transcript, "output_type": output}
    child["output_url"] = f"s3://stt-understanding/{account}/{transcript}/{output}/{suffix}"
    request = f"{transcript}#llm0"
    llm = {
        "account_id": account,
        "request_id": request,
        "input_url": f"s3://stt-llm-gateway/{account}/{request}/{suffix}in",
    }
    [via, _] = resolve(tables["transcripts"], parent).links
    transcript_key: dict[str, object] = {"transcript_id": transcript}
    cases = [
        (_planned(tables["transcripts"], {**parent, "audio_url": audio}), ("transcripts", transcript_key)),
        (_planned(tables["speech_outputs"], child, via), ("transcripts", transcript_key)),
        (_planned(tables["llm_requests"], llm), ("llm_requests", {"request_id": request})),
    ]
    for planned, owner in cases:
        assert planned
        for target in planned:
            assert _owners(owners(compiled, target.bucket, target.key, STRINGS)) == [owner], target


@SETTINGS
@given(identifiers, identifiers, identifiers, suffixes)
def test_no_orphan_candidate_of_the_single_table_example_is_ever_mapped_to_an_item(
    tenant: str, job: str, output: str, suffix: str
) -> None:
    compiled = SINGLE_TABLE.compile()
    table = compiled.tables["app"]
    transcript = {"PK": f"JOB#{job}", "SK": "TRANSCRIPT", "tenant": f"TENANT#{tenant}"}
    transcript["audio_url"] = f"s3://media/audio/{tenant}/{job}/{suffix}a.wav"
    out = {**transcript, "SK": f"OUTPUT#{output}", "output_url": f"s3://media/outputs/{tenant}/{job}/x"}
    for image in (transcript, out):
        for target in _planned(table, image):
            found = owners(compiled, target.bucket, target.key, STRINGS)
            assert found
            assert _reasons(found) == [UnresolvableReason.PARTIAL_KEY] * len(found)


keys = st.lists(st.sampled_from(["acct", "907", "9070", "", ".", "..", "a#b"]) | identifiers, max_size=4).map(
    "/".join
)


@SETTINGS
@given(st.sampled_from(["stt-uploads", "stt-understanding"]), keys)
def test_any_orphan_key_maps_to_the_one_item_its_second_segment_names_or_to_none(
    rules: Rules, bucket: str, key: str
) -> None:
    """In the demo's buckets, scopes are {account_id}/{transcript_id}/: a key below two segments, with no
    empty, '.' or '..' segment, is that transcript's, exactly; any other key is no item's."""
    segments = key.split("/")
    *path, name = segments
    clean = len(path) >= 2 and not {"", ".", ".."} & set(path) and name not in {".", ".."}
    expected = [("transcripts", {"transcript_id": segments[1]})] if clean else []
    found = owners(rules.compile(), bucket, key, STRINGS)
    assert _owners(found) == expected
    for owner in found:
        assert isinstance(owner, Owner) or owner.reason is UnresolvableReason.UNSAFE_KEY
        assert isinstance(owner, Unresolvable) or S3Location(bucket, key).is_within(owner.scope)


def test_an_orphan_under_scopes_a_link_hands_on_unchanged_belongs_to_the_parent() -> None:
    """With scope = 'parent' and no link scopes, the child's targets lie under the parent's own scope."""
    link = LinkSpec("child", "parent_id", "id", scope=ScopeMode.PARENT)
    parent = EntitySpec("", scopes=(Template.parse("s3://bkt/p/{id}/"),), links=(link,))
    child = EntitySpec("", object_attributes=("url",))
    compiled = RuleSet.of(
        frozenset({"bkt"}),
        ("parent",),
        {
            "parent": TableSpec("parent", ("id",), entities=(parent,)),
            "child": TableSpec("child", ("parent_id", "n"), entities=(child,)),
        },
    )
    [via] = resolve(compiled.tables["parent"], {"id": "p-1"}).links
    [target] = _planned(
        compiled.tables["child"], {"parent_id": "p-1", "n": "1", "url": "s3://bkt/p/p-1/c"}, via
    )
    assert _owners(owners(compiled, target.bucket, target.key)) == [("parent", {"id": "p-1"})]
