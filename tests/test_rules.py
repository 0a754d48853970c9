"""The rules file is validated before the worker starts, with errors that say what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.core.graph import find_cycle
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
        ({"scopes": ["s3://bkt/fixed/"]}, "must end with '/' and contain a {placeholder}"),
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
    assert set(table) == {"key", "ttl_attribute", "scopes", "object_attributes", "prefixes", "links"}
    assert all("description" in field for field in table.values())
    json.dumps(schema)  # serialisable as printed by `reconciler schema`


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
