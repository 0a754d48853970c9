"""The rules file is validated before the worker starts, with errors that say what is wrong."""

from __future__ import annotations

import json
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.core.classify import Cause
from reconciler.core.graph import find_cycle
from reconciler.core.spec import ExpiryIndex
from reconciler.errors import ConfigError
from reconciler.rules import Rules, load_rules


def _rules(**table: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"key": ["id"], "scopes": ["s3://bkt/{account}/{id}/"]}
    base.update(table)
    return {"buckets": ["bkt"], "sources": ["t"], "tables": {"t": base}}


def test_the_demo_rules_are_valid(rules: Rules) -> None:
    assert rules.sources == ("transcripts",)
    assert {link.table for link in rules.tables["transcripts"].links} == {"speech_outputs", "llm_requests"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scopes": ["s3://bkt/fixed/"]}, "must contain the partition key {id}"),
        ({"scopes": ["s3://bkt/{account}/{id}"]}, "must end with '/'"),
        ({"scopes": ["s3://bkt/{account}{id}/"]}, "must be a whole path segment"),
        ({"scopes": ["s3://bkt/{account}-{id}/"]}, "must be a whole path segment"),
        ({"scopes": ["s3://bkt/x{id}/"]}, "must be a whole path segment"),
        ({"scopes": ["s3://bkt/{account}/"]}, "must contain the partition key {id}"),
        (
            {"key": ["id", "part"], "prefixes": ["s3://bkt/{account}/{id}/"]},
            "must contain every key attribute; missing ['part']",
        ),
        ({"scopes": ["s3://{bucket}/{id}/"]}, "bucket of a template must be literal"),
        ({"scopes": ["s3://bkt/{id!r}/"]}, "must be a whole path segment"),
        ({"scopes": ["s3://bkt/{id|after:}/"]}, "must be a whole path segment"),
        ({"scopes": ["s3://bkt/{id|before:x}/"]}, "must be a whole path segment"),
        ({"scopes": ["s3://bkt/{parent.id}/"]}, "placeholders belong in a link's scopes"),
        ({"object_attributes": ["url"], "scopes": []}, "has S3 targets but no scopes"),
        (
            {
                "links": [
                    {
                        "table": "t",
                        "attribute": "id",
                        "value_from": "id",
                        "scope": "own",
                        "scopes": ["s3://bkt/{parent.id}/"],
                    }
                ]
            },
            "needs scope = 'parent' or 'both'",
        ),
        (
            {"links": [{"table": "u", "attribute": "id", "value_from": "id", "sort_begins_with": "X#"}]},
            "sort_begins_with needs sort_attribute",
        ),
        ({"cascade": {"skip": [{"attribute": "status"}]}}, "a skip condition is either"),
        ({"cascade": {"skip": [{"attribute": "a", "equals": "x", "principal": "p"}]}}, "a skip condition is"),
        ({"cascade": {"causes": ["deleted"]}}, "Input should be 'ttl', 'expired' or 'requested'"),
        ({"scopes": ["s3://bkt/{id.attr}/"]}, "must be a whole path segment"),
        ({"scopes": ["https://bkt/{id}/"]}, "not an s3:// URI"),
        ({"scopes": ["s3://other/{id}/"]}, "is not in buckets"),
        ({"prefixes": ["s3://bkt/{id}/"]}, "does not start with any of the scopes"),
        ({"links": [{"table": "missing", "attribute": "id", "value_from": "id"}]}, "has no rules"),
        ({"unknown": 1}, "Extra inputs are not permitted"),
        ({"scopes": ["s3://bkt/{account}//{id}/"]}, "has an empty, '.' or '..' path segment"),
        ({"scopes": ["s3://bkt//{id}/"]}, "has an empty, '.' or '..' path segment"),
        ({"scopes": ["s3://bkt/{account}/../{id}/"]}, "has an empty, '.' or '..' path segment"),
        ({"scopes": ["s3://bkt/./{id}/"]}, "has an empty, '.' or '..' path segment"),
        ({"prefixes": ["s3://bkt/{account}/{id}/../x/"]}, "has an empty, '.' or '..' path segment"),
    ],
)
def test_unsafe_or_inconsistent_rules_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        Rules.model_validate(_rules(**change))


def test_link_cycles_are_refused() -> None:
    data = _rules(links=[{"table": "u", "attribute": "id", "value_from": "id"}])
    data["tables"]["u"] = {
        "key": ["id"],
        "scopes": ["s3://bkt/{id}/"],
        "links": [{"table": "t", "attribute": "id", "value_from": "id"}],
    }
    with pytest.raises(ValidationError, match="links form a cycle"):
        Rules.model_validate(data)


def test_a_source_needs_rules() -> None:
    data = _rules()
    data["sources"] = ["elsewhere"]
    with pytest.raises(ValidationError, match="has no rules"):
        Rules.model_validate(data)


def test_load_rules_names_the_file_in_errors(tmp_path: Path) -> None:
    broken = tmp_path / "rules.toml"
    broken.write_text("buckets = [")
    with pytest.raises(ConfigError, match=r"rules.toml is not valid TOML"):
        load_rules(broken)
    broken.write_text(
        'buckets = ["bkt"]\nsources = ["t"]\n[tables.t]\nkey = ["id"]\nscopes = ["s3://bkt/x/"]\n'
    )
    with pytest.raises(ConfigError, match=r"rules.toml is not a valid rules file"):
        load_rules(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules(tmp_path / "absent.toml")


def test_the_json_schema_documents_every_field() -> None:
    schema = Rules.model_json_schema()
    table = schema["$defs"]["TableRules"]["properties"]
    assert set(table) == {
        "key", "ttl_attribute", "scopes", "object_attributes", "prefixes", "links", "entities", "cascade",
        "created_attribute", "expiry_index",
    }  # fmt: skip
    assert all("description" in field for field in table.values())
    link = schema["$defs"]["LinkRule"]["properties"]
    assert {"sort_attribute", "sort_begins_with", "entity", "scope", "scopes"} <= set(link)
    assert all("description" in field for field in link.values())
    json.dumps(schema)  # serialisable as printed by `reconciler schema`


def test_a_rules_file_of_the_earlier_format_loads_unchanged_and_compiles_alike(rules: Rules) -> None:
    spec = rules.compile().tables["transcripts"]
    (entity,) = spec.entities
    assert entity.name == ""
    assert [t.source for t in entity.scopes] == list(rules.tables["transcripts"].scopes)
    assert spec.cascade.causes == frozenset(Cause)


SINGLE_TABLE = tomllib.loads((Path(__file__).parent / "rules" / "single_table.toml").read_text())


def test_a_link_within_one_table_between_entity_types_is_not_a_cycle() -> None:
    spec = Rules.model_validate(SINGLE_TABLE).compile().tables["app"]
    assert [e.name for e in spec.entities] == ["transcript", "output"]
    assert spec.entity_of({"PK": "JOB#906", "SK": "OUTPUT#de"}) == spec.entity("output")
    assert spec.entity_of({"PK": "JOB#906", "SK": "NOTE#1"}) is None


def test_a_real_cycle_between_entity_types_is_refused() -> None:
    data = json.loads(json.dumps(SINGLE_TABLE))
    output = data["tables"]["app"]["entities"]["output"]
    output["links"].append({"table": "app", "attribute": "PK", "value_from": "PK", "entity": "transcript"})
    with pytest.raises(
        ValidationError, match=r"links form a cycle: app\.transcript -> app\.output -> app\.transcript"
    ):
        Rules.model_validate(data)


def test_a_table_with_s3_targets_reached_by_an_own_scoped_link_needs_scopes() -> None:
    data = json.loads(json.dumps(SINGLE_TABLE))
    data["tables"]["app"]["entities"]["transcript"]["links"][1].update(scope="own", scopes=[])
    with pytest.raises(ValidationError, match="table 'gateway' has S3 targets but no scopes"):
        Rules.model_validate(data)


def test_an_entity_of_a_source_with_s3_targets_needs_scopes_of_its_own() -> None:
    """Its REMOVE can arrive on its own (a customer deletes one output): there is no parent to check it by."""
    data = json.loads(json.dumps(SINGLE_TABLE))
    data["tables"]["app"]["entities"]["output"]["scopes"] = []
    with pytest.raises(
        ValidationError, match=r"entity 'output'.*(has S3 targets but no scopes|but it has none)"
    ):
        Rules.model_validate(data)


def test_a_link_scope_must_name_the_parents_partition_key() -> None:
    data = json.loads(json.dumps(SINGLE_TABLE))
    data["tables"]["app"]["entities"]["transcript"]["links"][1]["scopes"] = ["s3://media/o/{parent.SK}/"]
    with pytest.raises(ValidationError, match="must contain the parent's partition key"):
        Rules.model_validate(data)


def _table(links: list[str]) -> dict[str, Any]:
    return {
        "key": ["id"],
        "scopes": ["s3://bkt/{id}/"],
        "links": [{"table": t, "attribute": "id", "value_from": "id"} for t in links],
    }


def test_a_chain_of_two_thousand_linked_tables_loads_without_exhausting_the_stack() -> None:
    tables = {f"t{i}": _table([f"t{i + 1}"] if i < 1999 else []) for i in range(2000)}
    rules = Rules.model_validate({"buckets": ["bkt"], "sources": ["t0"], "tables": tables})
    assert len(rules.tables) == 2000


def test_a_diamond_shaped_link_graph_loads_and_a_cycle_at_its_bottom_is_named() -> None:
    """60 layers of two tables each linking to both of the next: 2**60 paths, 120 tables."""
    layers = 60
    tables = {
        f"l{i}{side}": _table([f"l{i + 1}a", f"l{i + 1}b"] if i < layers - 1 else [])
        for i in range(layers)
        for side in "ab"
    }
    data = {"buckets": ["bkt"], "sources": ["l0a"], "tables": tables}
    assert len(Rules.model_validate(data).tables) == 2 * layers
    tables[f"l{layers - 1}b"] = _table(["l0a"])
    with pytest.raises(ValidationError, match=r"links form a cycle: l0a -> .* -> l59b -> l0a"):
        Rules.model_validate(data)


def test_cycle_search_reads_each_tables_links_once() -> None:
    """Linear in tables plus links: each node's edges are asked for once, however many paths reach it."""
    reads: dict[str, int] = {}

    class Counting(dict[str, list[str]]):
        def __getitem__(self, key: str) -> list[str]:
            reads[key] = reads.get(key, 0) + 1
            return super().__getitem__(key)

    graph = Counting(
        {f"{i}{s}": [f"{i + 1}a", f"{i + 1}b"] if i < 20 else [] for i in range(21) for s in "ab"}
    )
    assert find_cycle(graph) is None
    assert set(reads.values()) == {1}
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


@pytest.mark.parametrize(
    ("skip", "image", "filtered"),
    [
        ({"attribute": "status", "not_equals": "ACTIVE"}, {}, False),  # no attribute: it still cascades
        ({"attribute": "status", "not_equals": "ACTIVE"}, {"status": "GONE"}, True),
        ({"attribute": "status", "not_equals": "ACTIVE"}, {"status": "ACTIVE"}, False),
        ({"attribute": "moved", "equals": True}, {"moved": Decimal(1)}, False),  # true is not the number 1
        ({"attribute": "moved", "equals": 1}, {"moved": True}, False),
        ({"attribute": "moved", "equals": 1}, {"moved": Decimal(1)}, True),
        ({"attribute": "moved", "equals": True}, {"moved": True}, True),
    ],
)
def test_skip_conditions_hold_only_on_a_present_attribute_of_the_same_kind(
    skip: dict[str, Any], image: dict[str, object], filtered: bool
) -> None:
    (condition,) = (
        Rules.model_validate(_rules(cascade={"skip": [skip]})).compile().tables["t"].cascade.skip_images
    )
    assert condition.holds(image) is filtered


def test_prefixes_of_two_kinds_that_could_render_alike_are_refused() -> None:
    """`x/{SK|after:A#}/` and `x/{SK|after:B#}/` both render `x/1/` for SK A#1 and B#1."""
    data = {
        "buckets": ["bkt"],
        "sources": ["t"],
        "tables": {
            "t": {
                "key": ["PK", "SK"],
                "entities": {
                    kind: {
                        "match": {"attribute": "SK", "begins_with": marker},
                        "scopes": ["s3://bkt/x/{PK}/"],
                        "prefixes": [f"s3://bkt/x/{{PK}}/{{SK|after:{marker}}}/"],
                    }
                    for kind, marker in (("a", "A#"), ("b", "B#"))
                },
            }
        },
    }
    with pytest.raises(ValidationError, match="could render the same prefix for items of two kinds"):
        Rules.model_validate(data)
    entities = data["tables"]["t"]["entities"]  # type: ignore[index]
    entities["b"]["scopes"] = ["s3://bkt/y/{PK}/"]
    entities["b"]["prefixes"] = ["s3://bkt/y/{PK}/{SK|after:B#}/"]
    assert Rules.model_validate(data)  # different literal segments cannot meet


def test_a_link_handing_on_the_scopes_of_a_parent_without_any_is_refused() -> None:
    data = _rules(links=[{"table": "u", "attribute": "id", "value_from": "id", "scope": "parent"}])
    data["tables"]["t"]["scopes"] = []
    data["tables"]["u"] = {"key": ["id"], "object_attributes": ["url"]}
    with pytest.raises(ValidationError, match="hands on this item's scopes, but it has none"):
        Rules.model_validate(data)


def test_a_cycle_of_links_that_hand_on_scopes_is_refused_not_followed_forever() -> None:
    data = _rules(links=[{"table": "u", "attribute": "id", "value_from": "id", "scope": "parent"}])
    data["tables"]["u"] = {
        "key": ["id"],
        "object_attributes": ["url"],
        "links": [{"table": "v", "attribute": "id", "value_from": "id", "scope": "parent"}],
    }
    data["tables"]["v"] = {
        "key": ["id"],
        "links": [{"table": "u", "attribute": "id", "value_from": "id", "scope": "parent"}],
    }
    with pytest.raises(ValidationError, match="hands on this item's scopes, but it has none"):
        Rules.model_validate(data)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "needs the table's ttl_attribute"),
        ({"ttl_attribute": "shard"}, "its partition key cannot be the TTL attribute"),
        ({"ttl_attribute": "ttl", "values": ["a", "a"]}, "partition_values repeat a value"),
        ({"ttl_attribute": "ttl", "values": []}, "at least 1 item"),
    ],
)
def test_an_expiry_index_needs_a_ttl_to_sort_by_and_distinct_partitions(
    table: dict[str, Any], message: str
) -> None:
    values = table.pop("values", ["a", "b"])
    index = {"name": "by-expiry", "partition_attribute": "shard", "partition_values": values}
    with pytest.raises(ValidationError, match=message):
        Rules.model_validate(_rules(expiry_index=index, **table))


def test_an_expiry_index_compiles_with_its_partition_values_in_order() -> None:
    index = {"name": "by-expiry", "partition_attribute": "shard", "partition_values": ["b", 3, "a"]}
    compiled = Rules.model_validate(_rules(ttl_attribute="ttl", expiry_index=index)).compile()
    assert compiled.tables["t"].expiry_index == ExpiryIndex("by-expiry", "shard", ("b", 3, "a"))
