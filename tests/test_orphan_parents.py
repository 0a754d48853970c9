"""A linked item maps back to the items that could own it (the orphan sweep's pure core for items): exactly
the parent whose cascade would have found it, with the same query, and when the parent cannot be named the
answer says so instead of guessing."""

from __future__ import annotations

import decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.parents import Parent, ParentIndex, ParentReason, UnknownParent, orphaned
from reconciler.core.plan import key_hash, resolve
from reconciler.core.reverse import KeyType
from reconciler.rules import load_rules

ROOT = Path(__file__).parent.parent
EXAMPLE = load_rules(ROOT / "deploy" / "example" / "rules.toml").compile()
DEMO = load_rules(ROOT / "reconciler" / "demo" / "rules.toml").compile()
SINGLE_TABLE = load_rules(ROOT / "tests" / "rules" / "single_table.toml").compile()
SETTINGS = settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)

identifiers = st.one_of(
    st.text(min_size=1, max_size=12),
    st.integers(min_value=-(10**12), max_value=10**12).map(decimal.Decimal),
)


@SETTINGS
@given(transcript=identifiers, other=identifiers, output=st.text(min_size=1, max_size=8))
def test_a_linked_item_maps_back_to_exactly_the_parent_whose_cascade_finds_it(
    transcript: str | decimal.Decimal, other: str | decimal.Decimal, output: str
) -> None:
    parent = {"transcript_id": transcript, "account_id": "acct-1"}
    plan = resolve(EXAMPLE.tables["transcripts"], parent)
    index = ParentIndex.of(EXAMPLE)
    for query in plan.links:
        child = {"transcript_id": transcript, "output_type": output, "request_id": f"{other}-r"}
        assert query.matches(child)
        found = index.parents(query.table, child)
        assert found == [Parent("transcripts", "", (("transcript_id", transcript),), query)]
        assert isinstance(found[0], Parent)
        assert found[0].ident == ("transcripts", key_hash("transcripts", {"transcript_id": transcript}))
        # A sibling whose id only begins the same way is another parent, never this one.
        sibling = child | {"transcript_id": f"{transcript}0"}
        assert [p.item_key for p in index.parents(query.table, sibling) if isinstance(p, Parent)] == [
            {"transcript_id": f"{transcript}0"}
        ]


@SETTINGS
@given(
    parents=st.lists(st.tuples(st.booleans(), st.text(max_size=4)), max_size=4),
    present=st.sets(st.text(max_size=4), max_size=4),
)
def test_an_item_is_an_orphan_only_if_every_parent_is_named_and_missing(
    parents: list[tuple[bool, str]], present: set[str]
) -> None:
    """``(named, id)``: a named parent of table t with key id, or an unknown one."""
    query = resolve(EXAMPLE.tables["transcripts"], {"transcript_id": "t", "account_id": "a"}).links[0]
    found: list[Parent | UnknownParent] = [
        Parent("t", "", (("id", ident),), query)
        if named
        else UnknownParent("t", "", ParentReason.PARTIAL_KEY, "")
        for named, ident in parents
    ]
    idents = {("t", key_hash("t", {"id": ident})) for ident in present}
    expected = bool(parents) and all(named and ident not in present for named, ident in parents)
    assert orphaned(found, idents) is expected
    for parent in found:  # any one parent that exists keeps the item
        if isinstance(parent, Parent):
            assert not orphaned(found, idents | {parent.ident})


@SETTINGS
@given(value=identifiers, sort=st.text(max_size=10))
def test_a_single_table_parent_linked_by_part_of_its_key_is_never_guessed(
    value: str | decimal.Decimal, sort: str
) -> None:
    index = ParentIndex.of(SINGLE_TABLE)
    child = {"PK": value, "SK": f"OUTPUT#{sort}", "tenant": "TENANT#acme"}
    found = index.parents("app", child)
    assert not [p for p in found if isinstance(p, Parent)]
    assert [(p.table, p.reason) for p in found if isinstance(p, UnknownParent)] == [
        ("app", ParentReason.PARTIAL_KEY)
    ]
    # Not an output (a transcript, say): no link matches it, so it is nobody's child.
    assert index.parents("app", child | {"SK": f"TRANSCRIPT{sort}"}) == []


def test_a_link_handing_on_scopes_beyond_the_parents_key_is_unresolvable_and_its_own_scope_is_not() -> None:
    index = ParentIndex.of(DEMO)
    speech = index.parents("speech_outputs", {"transcript_id": "907", "output_type": "translation"})
    assert [(p.table, p.reason) for p in speech if isinstance(p, UnknownParent)] == [
        ("transcripts", ParentReason.PARENT_SCOPE)
    ]
    request = index.parents("llm_requests", {"request_id": "907#llm0", "transcript_id": "907"})
    assert [p.item_key for p in request if isinstance(p, Parent)] == [{"transcript_id": "907"}]
    assert index.parents("llm_requests", {"request_id": "907#llm0"}) == []  # no link value: nobody's
    assert index.parents("llm_requests", {"request_id": "x", "transcript_id": ""}) == []


def test_a_scan_reads_keys_link_attributes_match_attributes_and_the_created_attribute_only() -> None:
    assert ParentIndex.of(EXAMPLE).linked == ("speech_outputs", "llm_requests")
    assert ParentIndex.of(EXAMPLE).attributes("llm_requests") == ("request_id", "transcript_id", "created_at")
    assert ParentIndex.of(SINGLE_TABLE).attributes("app") == ("PK", "SK")
    assert ParentIndex.of(DEMO).linked == ("llm_requests",)
    assert {t: [p.reason for p in ps] for t, ps in ParentIndex.of(DEMO).unswept.items()} == {
        "speech_outputs": [ParentReason.PARENT_SCOPE]
    }
    single = ParentIndex.of(SINGLE_TABLE)
    assert (single.linked, sorted(single.unswept)) == ((), ["app", "gateway", "segments"])


@SETTINGS
@given(value=identifiers, key_type=st.sampled_from(KeyType))
def test_a_link_value_of_another_type_than_the_parents_key_names_no_parent(
    value: str | decimal.Decimal, key_type: KeyType
) -> None:
    """A cascade finds children by the parent's typed value: "907" never links to the number 907."""
    index = ParentIndex.of(EXAMPLE, {"transcripts": {"transcript_id": key_type}})
    found = index.parents("llm_requests", {"request_id": "r", "transcript_id": value})
    typed = (key_type is KeyType.STRING) == isinstance(value, str) and key_type is not KeyType.BINARY
    assert [p.item_key for p in found if isinstance(p, Parent)] == (
        [{"transcript_id": value}] if typed else []
    )
