"""What a record asks for under its table's rules, and the compiled specs' small predicates."""

from __future__ import annotations

import datetime as dt
import decimal

import pytest

from reconciler.core.classify import Cause
from reconciler.core.decide import Decision, decide
from reconciler.core.graph import find_cycle
from reconciler.core.records import EventName, StreamRecord
from reconciler.core.spec import (
    CascadeSpec,
    EntitySpec,
    IdentityCondition,
    ImageCondition,
    RuleSet,
    TableSpec,
    begins_with,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _record(
    event: EventName = EventName.REMOVE,
    image: dict[str, object] | None = None,
    principal: str | None = None,
    kind: str | None = None,
) -> StreamRecord:
    return StreamRecord(
        event_id="e1",
        event_name=event,
        sequence_number="1" * 21,
        created_at=NOW,
        keys={"id": "a"},
        old_image=image,
        view_type=None,
        by_ttl_service=False,
        principal=principal,
        identity_type=kind,
    )


def _table(cascade: CascadeSpec | None = None) -> TableSpec:
    return TableSpec("t", ("id",), "expires_at", (EntitySpec(""),), cascade or CascadeSpec())


def test_an_insert_is_ignored_and_says_why() -> None:
    assert decide(_record(EventName.INSERT), _table()) == Decision("ignored", None, "INSERT deletes nothing")


def test_a_removal_without_an_old_image_cannot_be_planned() -> None:
    expected = Decision("no_image", Cause.REQUESTED, "REMOVE record carries no OldImage")
    assert decide(_record(), _table()) == expected
    # Image conditions cannot clear a removal whose image is missing: it is not filtered on their account.
    skipping = CascadeSpec(skip_images=(ImageCondition("status", "moved"),))
    assert decide(_record(), _table(skipping)) == expected


def test_a_cause_that_does_not_cascade_is_filtered_even_without_an_image() -> None:
    only_ttl = CascadeSpec(causes=frozenset({Cause.TTL}))
    assert decide(_record(), _table(only_ttl)) == Decision(
        "filtered", Cause.REQUESTED, "cause requested does not cascade"
    )


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        (ImageCondition("status", "moved"), "old image status is the configured value"),
        (ImageCondition("status", "live", negate=True), "old image status is not the configured value"),
    ],
)
def test_an_image_condition_filters_with_its_reason(condition: ImageCondition, reason: str) -> None:
    table = _table(CascadeSpec(skip_images=(condition,)))
    assert decide(_record(image={"id": "a", "status": "moved"}), table) == Decision(
        "filtered", Cause.REQUESTED, reason
    )


def test_a_removal_that_passes_every_filter_is_deleted() -> None:
    table = _table(CascadeSpec(skip_images=(ImageCondition("status", "moved"),)))
    assert decide(_record(image={"id": "a", "status": "live"}), table) == Decision("delete", Cause.REQUESTED)


@pytest.mark.parametrize(
    ("condition", "principal", "kind", "holds"),
    [
        (IdentityCondition("p", "Service"), "p", "Service", True),
        (IdentityCondition("p", "Service"), "p", "User", False),  # both given fields must match
        (IdentityCondition("p", "Service"), "q", "Service", False),
        (IdentityCondition("p", None), "p", None, True),
        (IdentityCondition(None, "Service"), None, "Service", True),
        (IdentityCondition(None, "Service"), None, "User", False),
    ],
)
def test_identity_conditions_need_every_given_field(
    condition: IdentityCondition, principal: str | None, kind: str | None, holds: bool
) -> None:
    assert condition.holds(_record(principal=principal, kind=kind)) is holds


def test_no_condition_always_begins_and_a_condition_needs_a_string_with_the_prefix() -> None:
    assert begins_with({}, None, "X#")
    assert begins_with({}, "SK", None)
    assert begins_with({"SK": "X#1"}, "SK", "X#")
    assert not begins_with({"SK": "Y#1"}, "SK", "X#")
    assert not begins_with({"SK": decimal.Decimal(1)}, "SK", "1")


def test_an_entity_is_found_by_name_or_not_at_all() -> None:
    table = _table()
    assert table.entity("") is table.entities[0]
    assert table.entity("missing") is None


def test_a_rule_set_keeps_what_it_is_given() -> None:
    rules = RuleSet.of(frozenset({"b"}), ("t",), {"t": _table()})
    assert rules.buckets == frozenset({"b"})
    assert rules.sources == ("t",)
    assert dict(rules.tables) == {"t": _table()}


def test_a_cycle_is_found_after_roots_already_walked_and_below_the_root() -> None:
    assert find_cycle({"a": ["b"], "b": [], "c": ["d"], "d": ["c"]}) == ["c", "d", "c"]
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]
