"""Age rules on the in-memory fakes: the rules file refuses unsafe ones, the core decides per object, and a
sweep deletes exactly the objects past their age, only for the listed accounts."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import tomllib
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from conftest import DEMO_RULES
from prometheus_client import CollectorRegistry

from reconciler.age import AgeReport, AgeSweep, age_job, read_accounts_file
from reconciler.core.age import Prefix, Verdict, account_of, account_prefixes, decide, parse_accounts_file
from reconciler.core.scope import S3Location
from reconciler.core.spec import AccountsFile, AgeRuleSpec
from reconciler.errors import ConfigError
from reconciler.iam import policy
from reconciler.observability.metrics import Metrics
from reconciler.ports import ObjectVersion, VersionPage
from reconciler.preflight import requirements
from reconciler.rules import Rules, load_rules
from reconciler.settings import Settings
from reconciler.sweep_once import age_text
from reconciler.testing import FakeAccountDirectory, FakeArtifactStore

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
OLD = NOW - dt.timedelta(hours=2)
YOUNG = NOW - dt.timedelta(minutes=10)
BUCKET = "stt-llm-gateway"
HOURLY = {"table": "accounts", "attribute": "account_id", "filter_attribute": "llm_ttl", "filter_value": "1h"}


def demo_without_age_rules() -> str:
    """The demo rules' text without their own age rules, for a test's to follow."""
    return DEMO_RULES.read_text().split("[[age_rules]]", 1)[0]


def _rules(*age_rules: dict[str, Any], base: Path | None = None) -> Rules:
    data = tomllib.loads(demo_without_age_rules())
    return Rules.model_validate({**data, "age_rules": list(age_rules)}, context={"base": base})


def _rule(**fields: Any) -> dict[str, Any]:
    return {
        "name": "llm-hourly",
        "scope": f"s3://{BUCKET}/requests/{{account_id}}/",
        "max_age": "1h",
    } | fields


def _spec(**fields: Any) -> AgeRuleSpec:
    return _rules(_rule(**fields)).compile().age_rules[0]


def _sweep(
    rules: Rules, artifacts: FakeArtifactStore, accounts: FakeAccountDirectory | None = None
) -> tuple[AgeSweep, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.initialize(rules.compile())
    sweep = AgeSweep(rules.compile(), artifacts, accounts or FakeAccountDirectory(), metrics, lambda: NOW)
    return sweep, registry


def _accounts(*rows: dict[str, object]) -> FakeAccountDirectory:
    directory = FakeAccountDirectory()
    for row in rows:
        directory.put("accounts", row)
    return directory


# The rules file


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scope": "s3://stt-other/requests/{account_id}/"}, "'stt-other' is not in buckets"),
        ({"scope": f"s3://{BUCKET}/{{account_id}}/"}, "must start with a fixed segment"),
        ({"scope": f"s3://{BUCKET}/requests/"}, "no {placeholder} to match them"),
        ({"scope": f"s3://{BUCKET}/requests/acct-{{account_id}}/"}, "must be a whole path segment"),
        ({"scope": f"s3://{BUCKET}/requests/{{account_id}}/{{day}}/"}, "one {placeholder} only"),
        ({"scope": f"s3://{BUCKET}/requests/{{account_id}}"}, "must end with '/'"),
        ({"scope": f"s3://{BUCKET}/requests/../{{account_id}}/"}, "'..' path segment"),
        ({"scope": f"s3://{BUCKET}/requests/{{parent.account_id}}/"}, "{parent.*}"),
        ({"max_age": "0h"}, "max_age"),
        ({"max_age": 0}, "max_age"),
        ({"max_age": "1w"}, "max_age"),
        ({"max_age": True}, "max_age"),
        ({"accounts_file": "a.txt"}, "not both"),
        ({"accounts_table": {"table": "accounts", "attribute": "a", "filter_value": 1}}, "go together"),
    ],
)
def test_an_unsafe_age_rule_is_refused_when_the_rules_are_loaded(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    rule = _rule(accounts_table={"table": "accounts", "attribute": "account_id"}) | fields
    path = tmp_path / "rules.toml"
    path.write_text(demo_without_age_rules() + "\n" + _toml_age_rule(rule))
    with pytest.raises(ConfigError, match="is not a valid rules file") as raised:
        load_rules(path)
    assert message in str(raised.value)


def _toml_age_rule(rule: dict[str, Any]) -> str:
    def value(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, bool):
            return str(v).lower()
        return repr(v) if isinstance(v, int) else '"' + str(v) + '"'

    return "[[age_rules]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in rule.items())


def test_two_age_rules_of_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="two age rules are named 'llm-hourly'"):
        _rules(_rule(), _rule(max_age=60))


def test_max_age_reads_units_and_seconds_and_an_accounts_file_is_read_from_the_rules_directory(
    tmp_path: Path,
) -> None:
    assert [_spec(max_age=age).max_age_seconds for age in ("1h", "30d", "90m", "45s", 7200)] == [
        3600,
        30 * 86400,
        5400,
        45,
        7200,
    ]
    path = tmp_path / "rules.toml"
    path.write_text(demo_without_age_rules() + "\n" + _toml_age_rule(_rule(accounts_file="hourly.txt")))
    accounts = load_rules(path).compile().age_rules[0].accounts
    assert accounts is not None
    assert getattr(accounts, "path", None) == str(tmp_path / "hourly.txt")


# The core


def test_an_account_is_the_whole_segment_of_the_key() -> None:
    rule = _spec(accounts_table=HOURLY)
    assert account_of(rule, "requests/907/in.json") == "907"
    assert account_of(rule, "requests/9070/in.json") == "9070"
    assert account_of(rule, "responses/907/in.json") is None
    marked = _spec(scope=f"s3://{BUCKET}/requests/{{account_id|after:ACCT#}}/", accounts_table=HOURLY)
    assert account_prefixes(marked, ["ACCT#907", "907"]) == (
        [Prefix(S3Location(BUCKET, "requests/907/"), "907")],
        1,
    )


def test_account_values_render_one_prefix_each_and_unsafe_values_none() -> None:
    rule = _spec(accounts_table=HOURLY)
    values = ["907", decimal.Decimal(90), "907", "", "..", "a/b", "x\x01", True, decimal.Decimal("1.5")]
    prefixes, refused = account_prefixes(rule, values)
    assert [p.location.key for p in prefixes] == ["requests/90/", "requests/907/"]
    assert refused == 6
    unlisted = _spec()
    assert account_prefixes(unlisted, None) == ([Prefix(S3Location(BUCKET, "requests/"), None)], 0)


@pytest.mark.parametrize(
    ("key", "written", "verdict"),
    [
        ("requests/907/in.json", [OLD], Verdict.EXPIRED),
        ("requests/907/in.json", [OLD, YOUNG], Verdict.YOUNG),  # the newest version decides
        ("requests/907/in.json", [OLD, None], Verdict.YOUNG),  # an unknown time is never old
        ("requests/907/in.json", [NOW - dt.timedelta(hours=1)], Verdict.YOUNG),  # exactly the age: not past
        ("requests/907/in.json", [NOW - dt.timedelta(hours=1, seconds=1)], Verdict.EXPIRED),
        ("requests/907/in.json", [], Verdict.YOUNG),
        ("requests/9070/in.json", [OLD], Verdict.UNSAFE),  # outside the prefix
        ("responses/907/in.json", [OLD], Verdict.UNSAFE),
        ("requests/907//in.json", [OLD], Verdict.UNSAFE),
        ("requests/907/../908/in.json", [OLD], Verdict.UNSAFE),
    ],
)
def test_the_verdict_on_one_listed_object(
    key: str, written: list[dt.datetime | None], verdict: Verdict
) -> None:
    rule = _spec(accounts_table=HOURLY)
    prefix = Prefix(S3Location(BUCKET, "requests/907/"), "907")
    assert decide(rule, prefix, key, written, NOW) is verdict


@pytest.mark.parametrize(
    ("scope", "key", "verdict"),
    [
        ("requests/{account_id}/", "requests/907/r1/in.json", Verdict.EXPIRED),
        ("requests/{account_id}/", "requests/loose.txt", Verdict.OUT_OF_SCOPE),
        ("requests/{account_id}/inputs/", "requests/907/inputs/in.json", Verdict.EXPIRED),
        ("requests/{account_id}/inputs/", "requests/907/outputs/out.json", Verdict.OUT_OF_SCOPE),
        ("requests/", "requests/loose.txt", Verdict.EXPIRED),
    ],
)
def test_without_a_list_an_object_must_lie_under_some_rendering_of_the_scope(
    scope: str, key: str, verdict: Verdict
) -> None:
    rule = _spec(scope=f"s3://{BUCKET}/{scope}")
    [prefix], _ = account_prefixes(rule, None)
    assert prefix.location.key == "requests/"
    assert decide(rule, prefix, key, [OLD], NOW) is verdict


def test_an_object_listed_under_an_account_prefix_but_naming_another_account_is_kept() -> None:
    """A prefix without the trailing '/' (never rendered by the rules, but a listing can be wrong) still
    yields only the account's own objects."""
    rule = _spec(accounts_table=HOURLY)
    loose = Prefix(S3Location(BUCKET, "requests/907"), "907")
    assert decide(rule, loose, "requests/9070/in.json", [OLD], NOW) is Verdict.OTHER_ACCOUNT
    assert decide(rule, loose, "requests/907/in.json", [OLD], NOW) is Verdict.EXPIRED


def test_an_accounts_file_holds_one_account_a_line_with_comment_lines() -> None:
    text = "# hourly retention\n907\n  90  \n\n# 9070 moved to daily\n"
    assert parse_accounts_file(text) == ["907", "90"]


# The sweep


def _world() -> FakeArtifactStore:
    """Listed accounts 907 and 90, unlisted 9070, each with an old and a young object; objects of another
    prefix and another bucket; versions and delete markers."""
    artifacts = FakeArtifactStore(page_size=3)
    for account in ("907", "9070", "90"):
        artifacts.put(BUCKET, f"requests/{account}/r1/input.json", versions=2, modified=OLD)
        artifacts.put(BUCKET, f"requests/{account}/r2/output.json", modified=YOUNG)
        artifacts.put(BUCKET, f"responses/{account}/r1/output.json", modified=OLD)
        artifacts.put("stt-uploads", f"requests/{account}/r1/input.json", modified=OLD)
    artifacts.put(BUCKET, "requests/907/r3/gone.json", versions=2, modified=OLD)
    _old_marker(artifacts, "requests/907/r3/gone.json")
    return artifacts


def _old_marker(artifacts: FakeArtifactStore, key: str) -> None:
    artifacts.mark_deleted(BUCKET, key)
    marker = artifacts.buckets[BUCKET].pop()
    artifacts.buckets[BUCKET].append(
        ObjectVersion(key, marker.version_id, is_delete_marker=True, last_modified=OLD)
    )


def _kept_after(report: AgeReport, artifacts: FakeArtifactStore) -> set[str]:
    assert report.deleted == len(report.expired)
    return artifacts.keys(BUCKET)


async def test_age_rules_delete_exactly_the_objects_past_their_age_only_for_the_listed_accounts() -> None:
    artifacts = _world()
    accounts = _accounts(
        {"account_id": "907", "llm_ttl": "1h"},
        {"account_id": 90, "llm_ttl": "1h"},
        {"account_id": "9070", "llm_ttl": "30d"},
        {"account_id": "9", "llm_ttl": "1h"},  # nothing under requests/9/
    )
    rules = _rules(_rule(accounts_table=HOURLY))
    sweep, registry = _sweep(rules, artifacts, accounts)
    everything = {(b, v.key, v.version_id) for b, vs in artifacts.buckets.items() for v in vs}

    dry = await sweep.sweep(dry_run=True)
    assert {(b, v.key, v.version_id) for b, vs in artifacts.buckets.items() for v in vs} == everything
    expected = ["requests/90/r1/input.json", "requests/907/r1/input.json", "requests/907/r3/gone.json"]
    assert sorted(o.key for o in dry.expired) == expected
    assert (dry.deleted, dry.versions_deleted) == (0, 0)

    report = await sweep.sweep(dry_run=False)
    assert sorted(o.key for o in report.expired) == expected
    assert (report.deleted, report.versions_deleted, report.young) == (3, 2 + 2 + 3, 2)
    assert _kept_after(report, artifacts) == {
        "requests/907/r2/output.json",
        "requests/90/r2/output.json",
        "requests/9070/r1/input.json",
        "requests/9070/r2/output.json",
        *(f"responses/{account}/r1/output.json" for account in ("907", "9070", "90")),
    }
    assert len(artifacts.buckets["stt-uploads"]) == 3
    assert registry.get_sample_value("reconciler_age_deletions_total", {"rule": "llm-hourly"}) == 3
    assert registry.get_sample_value("reconciler_age_versions_deleted_total", {"rule": "llm-hourly"}) == 7
    text = age_text(report, dry_run=False)
    assert "s3://stt-llm-gateway/requests/907/r1/input.json (2 versions) age 2:00:00" in text
    assert "deleted: 3 (7 versions)" in text


async def test_an_age_rule_without_accounts_deletes_every_old_object_under_its_static_prefix() -> None:
    artifacts = _world()
    artifacts.put(BUCKET, "requests/loose.txt", modified=OLD)  # under no rendering of the scope
    sweep, registry = _sweep(_rules(_rule()), artifacts)
    report = await sweep.sweep(dry_run=False)
    assert (report.deleted, report.kept) == (4, 1)
    labels = {"rule": "llm-hourly", "reason": "out_of_scope"}
    assert registry.get_sample_value("reconciler_age_kept_total", labels) == 1
    assert _kept_after(report, artifacts) == {
        "requests/loose.txt",
        *(f"requests/{account}/r2/output.json" for account in ("907", "9070", "90")),
        *(f"responses/{account}/r1/output.json" for account in ("907", "9070", "90")),
    }


async def test_accounts_from_a_file_are_read_again_on_every_pass(tmp_path: Path) -> None:
    listed = tmp_path / "hourly.txt"
    listed.write_text("# accounts with hourly retention\n9070\n")
    artifacts = _world()
    sweep, _ = _sweep(_rules(_rule(accounts_file="hourly.txt"), base=tmp_path), artifacts)
    first = await sweep.sweep(dry_run=False)
    assert [o.key for o in first.expired] == ["requests/9070/r1/input.json"]
    listed.write_text("907\n")
    second = await sweep.sweep(dry_run=False)
    assert sorted(o.key for o in second.expired) == [
        "requests/907/r1/input.json",
        "requests/907/r3/gone.json",
    ]
    listed.unlink()
    with pytest.raises(ConfigError, match="cannot read accounts file"):
        await sweep.sweep(dry_run=True)


async def test_an_age_rule_that_fails_leaves_the_others_to_run_and_the_pass_fails(tmp_path: Path) -> None:
    artifacts = _world()
    first = _rule(name="exports", accounts_file="missing.txt")  # cannot be read
    sweep, registry = _sweep(_rules(first, _rule(accounts_file="hourly.txt"), base=tmp_path), artifacts)
    (tmp_path / "hourly.txt").write_text("9070\n")
    with pytest.raises(ConfigError, match="cannot read accounts file"):
        await sweep.sweep(dry_run=False)
    assert artifacts.keys(BUCKET) >= {"requests/907/r1/input.json"}
    assert "requests/9070/r1/input.json" not in artifacts.keys(BUCKET)  # the second rule ran
    labels = {"stage": "age", "error": "ConfigError"}
    assert registry.get_sample_value("reconciler_failures_total", labels) == 1


async def test_an_object_refused_by_s3_is_kept_and_counted_and_the_rest_deleted() -> None:
    artifacts = _world()
    artifacts.refuse["requests/907/r1/input.json"] = "AccessDenied"
    sweep, registry = _sweep(_rules(_rule()), artifacts)
    report = await sweep.sweep(dry_run=False)
    assert (report.deleted, report.kept) == (3, 1)
    assert "requests/907/r1/input.json" in artifacts.keys(BUCKET)
    labels = {"rule": "llm-hourly", "reason": "refused"}
    assert registry.get_sample_value("reconciler_age_kept_total", labels) == 1


class _Careless(FakeArtifactStore):
    """A store whose listing ignores the prefix: the sweep's own scope check is all that is left."""

    async def list_versions(
        self, location: S3Location, *, exact: bool, after: ObjectVersion | None = None
    ) -> AsyncGenerator[VersionPage, None]:
        async for page in super().list_versions(S3Location(location.bucket, ""), exact=exact, after=after):
            yield page


async def test_nothing_outside_the_listed_account_prefix_is_deleted_whatever_the_listing_says() -> None:
    artifacts = _Careless()
    for key in ("requests/907/a.json", "requests/9070/a.json", "models/907/a.bin", "requests/907//b.json"):
        artifacts.put(BUCKET, key, modified=OLD)
    sweep, registry = _sweep(_rules(_rule(accounts_file="-")), artifacts)
    sweep._account_values = _fixed(["907"])  # type: ignore[method-assign]
    report = await sweep.sweep(dry_run=False)
    assert artifacts.keys(BUCKET) == {"requests/9070/a.json", "models/907/a.bin", "requests/907//b.json"}
    assert (report.deleted, report.kept) == (1, 3)
    labels = {"rule": "llm-hourly", "reason": "unsafe"}
    assert registry.get_sample_value("reconciler_age_kept_total", labels) == 3


def _fixed(values: list[object]) -> Any:
    async def account_values(rule: AgeRuleSpec) -> list[object]:
        return values

    return account_values


async def test_an_object_whose_versions_span_pages_loses_every_version_or_none() -> None:
    artifacts = FakeArtifactStore(page_size=2)
    artifacts.put(BUCKET, "requests/907/a.json", versions=5, modified=OLD)
    artifacts.put(BUCKET, "requests/907/b.json", versions=3, modified=OLD)
    artifacts.put(BUCKET, "requests/907/b.json", modified=YOUNG)
    sweep, _ = _sweep(_rules(_rule()), artifacts)
    report = await sweep.sweep(dry_run=False)
    assert (report.deleted, report.versions_deleted, report.young) == (1, 5, 1)
    assert [v.key for v in artifacts.buckets[BUCKET]] == ["requests/907/b.json"] * 4


async def test_account_values_that_cannot_be_a_segment_are_counted_and_list_nothing() -> None:
    artifacts = _world()
    accounts = _accounts({"account_id": ""}, {"account_id": "a/b"}, {"account_id": "907"}, {"other": "90"})
    sweep, registry = _sweep(
        _rules(_rule(accounts_table={"table": "accounts", "attribute": "account_id"})), artifacts, accounts
    )
    report = await sweep.sweep(dry_run=False)
    assert (report.prefixes, report.invalid_accounts, report.deleted) == (1, 2, 2)
    labels = {"rule": "llm-hourly", "reason": "invalid_account"}
    assert registry.get_sample_value("reconciler_age_kept_total", labels) == 2


# What the deployment must grant, and the pre-flight checks

EXAMPLE_RULES = DEMO_RULES.parent.parent.parent / "deploy" / "example" / "rules.toml"


def test_the_iam_policy_lets_an_age_rule_list_and_delete_under_its_static_prefix_and_scan_its_accounts() -> (
    None
):
    data = tomllib.loads(EXAMPLE_RULES.read_text())
    hourly = _rule(scope=f"s3://{BUCKET}/hourly/{{account_id}}/", accounts_table=HOURLY)
    rules = Rules.model_validate({**data, "age_rules": [hourly]})
    names = {"checkpoint_table": "c-table", "dead_letter_table": "d-table", "receipt_table": "r-table"}
    document = policy(rules, account_id="123456789012", region="eu-west-1", partition="aws", **names)
    grants = {(a, r) for s in document["Statement"] for a in s["Action"] for r in s["Resource"]}
    assert ("s3:DeleteObjectVersion", f"arn:aws:s3:::{BUCKET}/hourly/*") in grants
    assert ("dynamodb:Scan", "arn:aws:dynamodb:eu-west-1:123456789012:table/accounts") in grants
    listing = [s for s in document["Statement"] if s["Action"] == ["s3:ListBucketVersions"]]
    prefixes = {p for s in listing for p in s["Condition"]["StringLike"]["s3:prefix"]}
    assert {"hourly/*", "requests/*"} <= prefixes
    checks = requirements(rules.compile())
    assert checks.buckets[BUCKET] == ("hourly/", "requests/")
    assert checks.accounts_tables == {"accounts"}


async def test_the_demo_rules_age_rule_reads_its_accounts_file_beside_them() -> None:
    [rule] = load_rules(DEMO_RULES).compile().age_rules
    assert isinstance(rule.accounts, AccountsFile)
    assert await read_accounts_file(Path(rule.accounts.path)) == ["acct-1"]


@pytest.mark.parametrize("dry_run", [True, False])
async def test_the_worker_s_age_job_deletes_only_outside_a_dry_run(dry_run: bool) -> None:
    """The scheduled job ``age`` runs the sweep as the settings say: a shadow worker lists, never deletes."""
    artifacts = _world()
    before = list(artifacts.buckets[BUCKET])
    sweep, _ = _sweep(_rules(_rule()), artifacts)
    job = age_job(Settings(config=DEMO_RULES, dry_run=dry_run), sweep)
    assert (job.name, job.interval) == ("age", 3600.0)
    await job.run(asyncio.Event())
    assert (artifacts.buckets[BUCKET] == before) is dry_run
