"""The IAM policy is derived from the rules: it grants what the adapters call, on what the rules name, and no
deletion anywhere else."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint  # type: ignore[import-untyped]
from conftest import DEMO_RULES
from hypothesis import given
from hypothesis import strategies as st

from reconciler.adapters.tables import LETTERS_INDEX
from reconciler.cli import EXIT_USAGE, main
from reconciler.errors import ConfigError
from reconciler.iam import DEAD_LETTER_INDEX, DELETE_ACTIONS, policy
from reconciler.rules import LinkRule, Rules, load_rules
from reconciler.settings import Settings

ROOT = Path(__file__).parent.parent
EXAMPLE_RULES = ROOT / "deploy" / "example" / "rules.toml"
EXAMPLE_POLICY = ROOT / "deploy" / "example" / "iam-policy.json"
ACCOUNT, REGION = "123456789012", "eu-west-1"
EXAMPLE_ARGS = ["--config", "deploy/example/rules.toml", "--account-id", ACCOUNT, "--region", REGION]
REGENERATE = f"reconciler iam-policy {' '.join(EXAMPLE_ARGS)} > deploy/example/iam-policy.json"
# The largest managed policy IAM accepts, not counting whitespace.
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html
MANAGED_POLICY_CHARACTERS = 6144


def _policy(rules: Rules, **overrides: str) -> dict[str, Any]:
    names: dict[str, str] = {
        "account_id": ACCOUNT,
        "region": REGION,
        "partition": "aws",
        "checkpoint_table": "checkpoints",
        "dead_letter_table": "dead-letters",
        "receipt_table": "receipts",
    }
    return policy(rules, **(names | overrides))


def _example_data() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE_RULES.read_text(encoding="utf-8"))


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return list(document["Statement"])


def _grants(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every (action, resource) pair the policy allows."""
    for statement in _statements(document):
        for action in statement["Action"]:
            for resource in statement["Resource"]:
                yield action, resource


def _static(scope: str) -> tuple[str, str]:
    """(bucket, text before the first placeholder), read straight from the rules text."""
    match = re.fullmatch(r"s3://([^/]+)/([^{]*)\{.*", scope)
    assert match, scope
    return match.group(1), match.group(2)


def _reachable(rules: Rules) -> set[str]:
    """The sources and the tables linked from them, at any depth."""
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name not in seen:
            seen.add(name)
            for link in rules.tables[name].links:
                visit(link.table)

    for source in rules.sources:
        visit(source)
    return seen


def _links(rules: Rules) -> list[LinkRule]:
    return [link for name in _reachable(rules) for link in rules.tables[name].links]


def _scope_statics(rules: Rules) -> set[tuple[str, str]]:
    """(bucket, static prefix) of every scope the worker can reach."""
    return {_static(scope) for name in _reachable(rules) for scope in rules.tables[name].scopes}


# --- the committed example ---------------------------------------------------------------------------------


def test_the_committed_policy_is_what_the_example_rules_generate(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the documented command runs from the repository root
    assert main(["iam-policy", *EXAMPLE_ARGS]) == 0
    printed = capsys.readouterr().out
    assert printed == EXAMPLE_POLICY.read_text(encoding="utf-8"), (
        f"deploy/example/iam-policy.json is stale; regenerate it (from the repository root):\n  {REGENERATE}"
    )


def test_the_example_rules_name_the_command_that_regenerates_the_policy() -> None:
    assert REGENERATE in EXAMPLE_RULES.read_text(encoding="utf-8")


def _lint(document: dict[str, Any]) -> list[str]:
    """cfn-lint's findings on the document as a managed policy: shape, Sids, and every action's name."""
    resource = {"Type": "AWS::IAM::ManagedPolicy", "Properties": {"PolicyDocument": document}}
    template = {"AWSTemplateFormatVersion": "2010-09-09", "Resources": {"Worker": resource}}
    return [str(match) for match in lint(json.dumps(template), config=ManualArgs(regions=[REGION]))]


def test_the_example_policy_is_valid_iam_and_fits_a_managed_policy() -> None:
    document = json.loads(EXAMPLE_POLICY.read_text(encoding="utf-8"))
    assert _lint(document) == []
    assert len(re.sub(r"\s", "", json.dumps(document))) <= MANAGED_POLICY_CHARACTERS


@pytest.mark.parametrize(("field", "value"), [("Action", ["dynamodb:DeleteItems"]), ("Sid", "Linked-Items")])
def test_the_iam_lint_catches_a_misspelt_action_or_a_bad_sid(field: str, value: object) -> None:
    document = json.loads(EXAMPLE_POLICY.read_text(encoding="utf-8"))
    document["Statement"][0][field] = value
    assert _lint(document) != []


def test_every_bucket_and_table_of_the_example_appears() -> None:
    rules = load_rules(EXAMPLE_RULES)
    resources = {resource for _, resource in _grants(_policy(rules))}
    for bucket in rules.buckets:
        assert f"arn:aws:s3:::{bucket}" in resources
    for table in [*rules.tables, "checkpoints", "dead-letters", "receipts"]:
        assert any(r.split(":table/")[-1].split("/")[0] == table for r in resources if ":table/" in r), table


# --- what the code calls, on what ---------------------------------------------------------------------------

_SPECIAL = {
    # ListObjectVersions is authorized as s3:ListBucketVersions; DeleteObjects per key, by version id.
    "list_object_versions": {"s3:ListBucketVersions"},
    "delete_objects": {"s3:DeleteObject", "s3:DeleteObjectVersion"},
}


def _adapter_actions() -> set[str]:
    """The IAM actions of every AWS call the adapters make (through ``self._client``, ``_dynamodb``, ...).

    ``tables.py`` is left out: creating tables is for local use and deliberately not granted."""
    actions: set[str] = set()
    for path in sorted((ROOT / "reconciler" / "adapters").glob("*.py")):
        if path.name == "tables.py":
            continue
        service = "s3" if path.name == "s3.py" else "dynamodb"  # DynamoDB Streams actions are dynamodb:*
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
                continue
            owner = node.value
            is_self = isinstance(owner.value, ast.Name) and owner.value.id == "self"
            if is_self and owner.attr in {"_client", "_dynamodb", "_streams"}:
                camel = "".join(word.capitalize() for word in node.attr.split("_"))
                actions |= _SPECIAL.get(node.attr, {f"{service}:{camel}"})
    return actions


def test_the_policy_grants_exactly_the_calls_the_adapters_make() -> None:
    """Adding an AWS call to an adapter (or dropping one) without changing the policy fails here."""
    granted = {action for action, _ in _grants(_policy(load_rules(EXAMPLE_RULES)))}
    assert granted == _adapter_actions()


def test_the_lease_table_is_the_checkpoint_table_and_gets_what_leases_need() -> None:
    """List a stream's leases, create one only if absent, read, renew, take and release: nothing else."""
    document = _policy(load_rules(EXAMPLE_RULES), checkpoint_table="leases")
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/leases"
    on_leases = {action for action, resource in _grants(document) if resource == table}
    expected = {"dynamodb:Query", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem"}
    assert on_leases == expected | {"dynamodb:DescribeTable"}  # DescribeTable: the pre-flight
    assert not any(resource.startswith(f"{table}/") for _, resource in _grants(document))  # no index


def test_each_kind_of_resource_gets_only_its_own_actions() -> None:
    rules = load_rules(EXAMPLE_RULES)
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/"
    by_resource: dict[str, set[str]] = {}
    for action, resource in _grants(_policy(rules)):
        by_resource.setdefault(resource, set()).add(action)
    assert by_resource == {
        f"{table}transcripts/stream/*": {
            "dynamodb:DescribeStream",
            "dynamodb:GetShardIterator",
            "dynamodb:GetRecords",
        },
        f"{table}transcripts": {
            "dynamodb:DescribeTable",
            "dynamodb:BatchGetItem",
            "dynamodb:GetItem",
            "dynamodb:Scan",  # the expiry sweeper
            "dynamodb:DeleteItem",
        },
        f"{table}speech_outputs": {
            "dynamodb:Query",
            "dynamodb:BatchGetItem",
            "dynamodb:GetItem",
            "dynamodb:DeleteItem",
            "dynamodb:DescribeTable",
            "dynamodb:Scan",  # the orphan sweep
        },
        f"{table}llm_requests": {
            "dynamodb:BatchGetItem",
            "dynamodb:GetItem",
            "dynamodb:DeleteItem",
            "dynamodb:DescribeTable",
            "dynamodb:Scan",
        },
        f"{table}llm_requests/index/by_transcript": {"dynamodb:Query"},
        f"{table}checkpoints": {
            "dynamodb:GetItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "dynamodb:PutItem",
            "dynamodb:DescribeTable",
        },
        f"{table}dead-letters": {"dynamodb:UpdateItem", "dynamodb:DescribeTable"},
        f"{table}dead-letters/index/by-kind-status": {"dynamodb:Query"},
        f"{table}receipts": {"dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:DescribeTable"},
        f"{table}accounts": {"dynamodb:Scan", "dynamodb:DescribeTable"},  # an age rule's accounts
        **{f"arn:aws:s3:::{b}": {"s3:ListBucketVersions"} for b in rules.buckets},
        **{
            f"arn:aws:s3:::{b}/{p}*": {"s3:DeleteObject", "s3:DeleteObjectVersion"}
            for b, p in _scope_statics(rules)
        },
    }


def test_the_dead_letter_index_granted_is_the_one_the_tables_have() -> None:
    assert LETTERS_INDEX.name == DEAD_LETTER_INDEX


def test_listing_is_limited_to_the_scope_prefixes() -> None:
    for statement in _statements(_policy(load_rules(EXAMPLE_RULES))):
        if statement["Action"] == ["s3:ListBucketVersions"]:
            assert statement["Condition"]["StringLike"]["s3:prefix"] in (
                ["audio/*"],
                ["transcripts/*"],
                ["outputs/*"],
                ["requests/*"],
            )


# --- deletion stays inside what the rules name -----------------------------------------------------------


def _assert_deletion_is_scoped(rules: Rules, document: dict[str, Any]) -> None:
    statics = _scope_statics(rules)
    linked = {f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{link.table}" for link in _links(rules)}
    # The expiry sweeper deletes expired items of sources whose expired removals cascade, and nothing else.
    linked |= {
        f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
        for name in rules.sources
        if rules.tables[name].ttl_attribute is not None and "expired" in rules.tables[name].cascade.causes
    }
    for action, resource in _grants(document):
        if action not in DELETE_ACTIONS and not action.startswith("s3:Delete"):
            continue
        assert "*" not in resource.removesuffix("*"), resource
        if action.startswith("s3:"):
            assert resource.endswith("*"), resource
            assert _s3_target(resource)[1], resource  # never the whole bucket
            assert _s3_target(resource) in statics, resource
        else:
            assert resource in linked, resource


def test_no_deletion_is_granted_outside_the_example_rules() -> None:
    rules = load_rules(EXAMPLE_RULES)
    _assert_deletion_is_scoped(rules, _policy(rules))


@pytest.mark.parametrize(
    "statement",
    _statements(json.loads(EXAMPLE_POLICY.read_text(encoding="utf-8"))),
    ids=lambda s: str(s["Sid"]),
)
def test_no_committed_statement_grants_deletion_on_a_wildcard(statement: dict[str, Any]) -> None:
    deletes = [a for a in statement["Action"] if a in DELETE_ACTIONS or a.startswith("s3:Delete")]
    assert statement["Effect"] == "Allow"
    if deletes:
        for resource in statement["Resource"]:
            assert resource != "*"
            assert not re.fullmatch(r"arn:aws:s3:::[^/]+/\*", resource), resource
            assert not resource.endswith(("table/*", ":*")), resource


# Small alphabets, so that generated rules share buckets and prefixes and bucket names collide as Sids.
_segment = st.text("ab1_-", min_size=1, max_size=3)
_bucket = st.builds(
    "{}{}{}".format, st.sampled_from("ab"), st.text("ab.-", min_size=1, max_size=2), st.just("1")
)
_name = st.text("Ab1_.-", min_size=1, max_size=4)


@st.composite
def _rules(draw: st.DrawFn) -> Rules:
    """Valid rules: a few buckets, tables with scopes under fixed prefixes, acyclic links, some sources."""
    buckets = draw(st.lists(_bucket, min_size=1, max_size=4, unique=True))
    names = draw(st.lists(_name, min_size=1, max_size=4, unique=True))
    fixed = st.lists(_segment, min_size=1, max_size=3).map(lambda s: "".join(f"{x}/" for x in s))
    tail = st.sampled_from(["", "{part}/", "more/{part}/"])
    scope = st.builds("s3://{}/{}{{id}}/{}".format, st.sampled_from(buckets), fixed, tail)
    tables: dict[str, Any] = {}
    for position, name in enumerate(names):
        later = names[position + 1 :]
        link = st.fixed_dictionaries(
            {"table": st.sampled_from(later or [name]), "attribute": _name, "value_from": _name},
            optional={"index": _name},
        )
        tables[name] = {
            "key": ["id"],
            "scopes": draw(st.lists(scope, min_size=1, max_size=3, unique=True)),
            "links": draw(st.lists(link, max_size=3)) if later else [],
        }
    sources = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    return Rules.model_validate({"buckets": buckets, "sources": sources, "tables": tables})


def _s3_target(resource: str) -> tuple[str, str]:
    """``arn:aws:s3:::bucket/prefix*`` as (bucket, prefix)."""
    bucket, _, key = resource.removeprefix("arn:aws:s3:::").partition("/")
    return bucket, key.removesuffix("*")


@given(_rules())
def test_every_deletion_grant_lies_under_a_scope_static_prefix(rules: Rules) -> None:
    document = _policy(rules)
    _assert_deletion_is_scoped(rules, document)
    deletable = [_s3_target(r) for a, r in _grants(document) if a == "s3:DeleteObjectVersion"]
    for bucket, static in _scope_statics(rules):  # and everything in scope stays deletable
        assert any(b == bucket and static.startswith(p) for b, p in deletable), (bucket, static)


@given(_rules())
def test_every_table_and_bucket_the_rules_use_appears(rules: Rules) -> None:
    grants = set(_grants(_policy(rules)))
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/"
    for source in rules.sources:
        assert ("dynamodb:GetRecords", f"{table}{source}/stream/*") in grants
        assert ("dynamodb:DescribeTable", f"{table}{source}") in grants
    for link in _links(rules):
        assert ("dynamodb:DeleteItem", f"{table}{link.table}") in grants
        queried = f"{table}{link.table}/index/{link.index}" if link.index else f"{table}{link.table}"
        assert ("dynamodb:Query", queried) in grants
    for bucket, _ in _scope_statics(rules):
        assert ("s3:ListBucketVersions", f"arn:aws:s3:::{bucket}") in grants


@given(_rules())
def test_sids_are_unique_alphanumeric_and_sorted(rules: Rules) -> None:
    sids = [s["Sid"] for s in _statements(_policy(rules))]
    assert sids == sorted(set(sids))
    assert all(re.fullmatch(r"[A-Za-z0-9]+", sid) for sid in sids)


def test_buckets_alike_in_camel_case_get_distinct_stable_sids() -> None:
    table = {"key": ["id"], "scopes": ["s3://a-b1/x/{id}/", "s3://a.b1/x/{id}/"]}
    data = {"buckets": ["a-b1", "a.b1"], "sources": ["t"], "tables": {"t": table}}
    sids = [s["Sid"] for s in _statements(_policy(Rules.model_validate(data)))]
    listing = [sid for sid in sids if sid.startswith("S3ListVersions")]
    assert len(set(listing)) == 2
    assert all(re.fullmatch(r"S3ListVersionsAB1[0-9a-f]{8}", sid) for sid in listing)
    assert sids == [s["Sid"] for s in _statements(_policy(Rules.model_validate(data)))]


# --- the policy follows the rules -----------------------------------------------------------------------


def test_a_new_bucket_and_table_appear_in_the_policy() -> None:
    data = _example_data()
    data["buckets"].append("stt-exports")
    data["tables"]["llm_requests"]["scopes"].append("s3://stt-exports/exports/{account_id}/{request_id}/")
    data["tables"]["llm_requests"]["links"] = [
        {"table": "audit", "attribute": "request_id", "value_from": "request_id"}
    ]
    data["tables"]["audit"] = {"key": ["request_id"], "scopes": ["s3://stt-exports/audit/{request_id}/"]}
    before, after = _policy(load_rules(EXAMPLE_RULES)), _policy(Rules.model_validate(data))
    added = set(_grants(after)) - set(_grants(before))
    assert added == {
        ("s3:ListBucketVersions", "arn:aws:s3:::stt-exports"),
        ("s3:DeleteObject", "arn:aws:s3:::stt-exports/exports/*"),
        ("s3:DeleteObjectVersion", "arn:aws:s3:::stt-exports/exports/*"),
        ("s3:DeleteObject", "arn:aws:s3:::stt-exports/audit/*"),
        ("s3:DeleteObjectVersion", "arn:aws:s3:::stt-exports/audit/*"),
        ("dynamodb:Query", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/audit"),
        ("dynamodb:DeleteItem", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/audit"),
        ("dynamodb:DescribeTable", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/audit"),
        # A receipt's re-check reads deleted linked items again by key.
        ("dynamodb:BatchGetItem", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/audit"),
        ("dynamodb:GetItem", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/audit"),
        ("dynamodb:Scan", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/audit"),
    }
    assert set(_grants(before)) <= set(_grants(after))


def test_a_bucket_no_scope_names_is_granted_nothing() -> None:
    data = _example_data()
    data["buckets"].append("stt-unused")
    assert _policy(Rules.model_validate(data)) == _policy(load_rules(EXAMPLE_RULES))


def test_a_table_nothing_links_to_is_granted_nothing() -> None:
    data = _example_data()
    data["buckets"].append("stt-archive")
    data["tables"]["archive"] = {
        "key": ["transcript_id"],
        "scopes": ["s3://stt-archive/old/{transcript_id}/"],
    }
    data["tables"]["archive"]["links"] = [{"table": "llm_requests", "attribute": "x", "value_from": "y"}]
    assert _policy(Rules.model_validate(data)) == _policy(load_rules(EXAMPLE_RULES))


def test_a_scope_nested_in_another_adds_no_grant() -> None:
    data = _example_data()
    data["tables"]["speech_outputs"]["scopes"].append("s3://stt-uploads/audio/derived/{transcript_id}/")
    assert _policy(Rules.model_validate(data)) == _policy(load_rules(EXAMPLE_RULES))


def test_partition_region_account_and_table_names_go_into_the_arns() -> None:
    document = _policy(
        load_rules(EXAMPLE_RULES),
        partition="aws-cn",
        region="cn-north-1",
        account_id="210987654321",
        checkpoint_table="cpt",
        dead_letter_table="dl.letters",
    )
    resources = {r for _, r in _grants(document)}
    assert "arn:aws-cn:dynamodb:cn-north-1:210987654321:table/cpt" in resources
    assert "arn:aws-cn:dynamodb:cn-north-1:210987654321:table/dl.letters" in resources
    assert "arn:aws-cn:s3:::stt-uploads/audio/*" in resources
    assert all(r.startswith("arn:aws-cn:") for r in resources)


# --- refusals --------------------------------------------------------------------------------------------


def test_a_scope_starting_with_a_placeholder_is_refused_not_granted_bucket_wide() -> None:
    """The demo's scopes start with {account_id}: the only covering grant would be the whole bucket."""
    with pytest.raises(ConfigError, match=r"starts with a \{placeholder\}.*'stt-uploads'"):
        _policy(load_rules(DEMO_RULES))


@pytest.mark.parametrize("fixed", ["a*b/", "what?/", "$x/"])
def test_a_static_prefix_with_iam_wildcards_is_refused(fixed: str) -> None:
    data = _example_data()
    data["tables"]["speech_outputs"]["scopes"] = [f"s3://stt-understanding/{fixed}{{transcript_id}}/"]
    with pytest.raises(ConfigError, match="IAM wildcards"):
        _policy(Rules.model_validate(data))


@pytest.mark.parametrize(
    "override",
    [
        {"account_id": "12345678901"},
        {"account_id": "*"},
        {"region": "*"},
        {"region": "eu-west"},
        {"partition": "*"},
        {"checkpoint_table": "*"},
        {"dead_letter_table": "dead/letters"},
        {"dead_letter_table": "x"},
        {"receipt_table": "receipts?"},
    ],
)
def test_malformed_names_are_refused(override: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="is not a valid"):
        _policy(load_rules(EXAMPLE_RULES), **override)


# --- the command -------------------------------------------------------------------------------------------


def test_the_command_prints_json_with_the_worker_default_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["iam-policy", "--config", str(EXAMPLE_RULES), "--account-id", ACCOUNT, "--region", REGION]) == 0
    )
    document = json.loads(capsys.readouterr().out)
    resources = {r for _, r in _grants(document)}
    for field in ("checkpoint_table", "dead_letter_table", "receipt_table"):
        default = Settings.model_fields[field].default
        assert f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{default}" in resources


def test_the_command_takes_table_names_and_partition(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "iam-policy",
        "--config",
        str(EXAMPLE_RULES),
        "--account-id",
        ACCOUNT,
        "--region",
        "us-gov-west-1",
    ]
    argv += ["--partition", "aws-us-gov", "--checkpoint-table", "cpt", "--dead-letter-table", "dlt"]
    argv += ["--receipt-table", "rct"]
    assert main(argv) == 0
    resources = {r for _, r in _grants(json.loads(capsys.readouterr().out))}
    assert "arn:aws-us-gov:dynamodb:us-gov-west-1:123456789012:table/cpt" in resources
    assert "arn:aws-us-gov:dynamodb:us-gov-west-1:123456789012:table/dlt" in resources
    assert "arn:aws-us-gov:dynamodb:us-gov-west-1:123456789012:table/rct" in resources


def test_the_command_reports_unusable_rules_as_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["iam-policy", "--config", str(DEMO_RULES), "--account-id", ACCOUNT, "--region", REGION])
        == EXIT_USAGE
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "fixed first segment" in captured.err


def test_a_single_table_layout_grants_its_self_links_entity_links_and_link_scopes() -> None:
    """Links of entity types and a table's links to itself are reached; a link's parent scopes are granted."""
    document = _policy(load_rules(Path(__file__).parent / "rules" / "single_table.toml"))
    grants = set(_grants(document))
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table"
    assert ("dynamodb:DeleteItem", f"{table}/app") in grants  # outputs share the source table
    assert ("dynamodb:Query", f"{table}/gateway/index/by_job") in grants
    assert ("dynamodb:DeleteItem", f"{table}/segments") in grants  # a grandchild, through an entity's link
    objects = {r for a, r in grants if a == "s3:DeleteObjectVersion"}
    assert objects == {f"arn:aws:s3:::media/{p}/*" for p in ("audio", "llm", "outputs")}
