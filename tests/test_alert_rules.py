"""The shipped Prometheus rules: valid for promtool, unit-tested alert by alert, in step with the worker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from promserver import promtool

from reconciler.observability.metrics import LAG_BUCKETS, Metrics
from reconciler.observability.promql import RESERVED, Scope
from reconciler.observability.slo import (
    BURN_WINDOWS,
    CREEPING,
    FAST,
    SLOW,
    STEADY,
    TTL_SERVICE_LATE_SECONDS,
    Slo,
    duration,
    rule_groups,
)
from reconciler.rules import load_rules

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "reconciler.rules.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "prometheus" / "prometheusrule.yaml"
UNIT_TESTS = Path(__file__).parent / "prometheus" / "alerts.test.yaml"
BURN_TESTS = UNIT_TESTS.with_name("burn.test.yaml")  # the ticket windows, over days
PER_DEPLOYMENT_TESTS = UNIT_TESTS.with_name("per_deployment.test.yaml")  # rules with --keep-labels namespace
RUNBOOK = ROOT / "docs" / "runbook.md"
DEMO_RULES = ROOT / "reconciler" / "demo" / "rules.toml"


def _alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _run_unit_tests(
    directory: Path, groups: list[dict[str, Any]], tests: Path = UNIT_TESTS
) -> tuple[int, str]:
    """Run committed promtool unit tests against ``groups`` (annotations left out, see the test file)."""
    for rule in _alerts(groups):
        rule.pop("annotations", None)
    (directory / "reconciler.rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (directory / tests.name).write_text(tests.read_text())
    result = promtool("test", "rules", str(directory / tests.name))
    return result.returncode, result.stdout + result.stderr


def test_the_plain_rules_file_passes_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups())} rules found" in result.stdout


def test_the_prometheus_rule_carries_the_same_groups_and_passes_promtool(tmp_path: Path) -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(resource["spec"]))
    result = promtool("check", "rules", str(tmp_path / "spec.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("tests", [UNIT_TESTS, BURN_TESTS], ids=lambda path: path.name)
def test_every_alert_passes_its_promtool_unit_tests(tmp_path: Path, tests: Path) -> None:
    code, output = _run_unit_tests(tmp_path, rule_groups(), tests)
    assert code == 0, output


def test_alert_rules_with_a_kept_label_alert_per_deployment_in_promtool(tmp_path: Path) -> None:
    code, output = _run_unit_tests(tmp_path, rule_groups(keep=["namespace"]), PER_DEPLOYMENT_TESTS)
    assert code == 0, output


@pytest.mark.parametrize("tests", [UNIT_TESTS, BURN_TESTS, PER_DEPLOYMENT_TESTS], ids=lambda path: path.name)
def test_alert_unit_tests_evaluate_the_recording_rules_before_the_alerts_that_read_them(tests: Path) -> None:
    """Unordered, promtool shuffles the groups: alerts evaluated first read the recorded series one interval
    late, which at the burn tests' 10 minutes is past the 5-minute lookback, and fails them now and then."""
    order = yaml.safe_load(tests.read_text())["group_eval_order"]
    assert order == [group["name"] for group in rule_groups()]
    assert order[0] == "reconciler-slo-recording"


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_silent() -> None:
    cases = [case for path in (UNIT_TESTS, BURN_TESTS) for case in yaml.safe_load(path.read_text())["tests"]]
    checks = [check for case in cases for check in case.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in checks if c["exp_alerts"]}
    silent = {c["alertname"] for c in checks if not c["exp_alerts"]}
    names = {rule["alert"] for rule in _alerts(rule_groups())}
    assert names - fires == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"


def test_a_bucket_bound_written_as_an_integer_would_never_fire(tmp_path: Path) -> None:
    """The trap the rules avoid: with le="3600" the fast-burn unit test fails, so the tests would catch it."""
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace('le="3600.0"', 'le="3600"')
    code, output = _run_unit_tests(tmp_path, groups)
    assert code != 0
    assert "ReconcilerDeletionLagBudgetBurnFast" in output


def test_the_slo_rules_count_the_bucket_label_exactly_as_the_worker_exports_it() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.pipeline_lag.labels("ttl").observe(10.0)
    metrics.observe_enforced("transcripts", 10.0)
    metrics.ttl_service_lag.labels("ttl").observe(10.0)
    exposition = generate_latest(metrics.registry).decode()
    le = Slo().le
    assert f'reconciler_pipeline_lag_seconds_bucket{{cause="ttl",le="{le}"}} 1.0' in exposition
    assert f'reconciler_enforcement_lag_seconds_bucket{{le="{le}",table="transcripts"}} 1.0' in exposition
    assert f'reconciler_ttl_service_lag_seconds_bucket{{cause="ttl",le="{le}"}} 1.0' in exposition
    assert f'le="{le}"' in RULES.read_text()
    assert TTL_SERVICE_LATE_SECONDS in LAG_BUCKETS  # the TTL ticket counts a bucket too


def test_the_slo_counts_only_the_workers_own_lag_never_the_ttl_service_or_end_to_end_lag() -> None:
    recorded = [r["expr"] for r in rule_groups()[0]["rules"] if r["record"].startswith("reconciler:deletion")]
    for expr in recorded[:-1]:  # every error ratio; the last rule is the budget left, read from the 30d one
        assert "reconciler_pipeline_lag_seconds_bucket" in expr
        assert "reconciler_enforcement_lag_seconds_bucket" in expr
        assert "reconciler_deletions_unfinished_total" in expr
        assert "reconciler_ttl_service_lag" not in expr
        assert "reconciler_deletion_lag_seconds" not in expr


def test_burn_rates_and_thresholds_follow_the_sre_workbook_for_thirty_days() -> None:
    slo = Slo()
    assert [(w.name, slo.burn_rate(w), w.severity) for w in BURN_WINDOWS] == [
        ("Fast", 14.4, "page"),
        ("Slow", 6.0, "page"),
        ("Steady", 3.0, "ticket"),
        ("Creeping", 1.0, "ticket"),
    ]
    windows = [(duration(w.long), duration(w.short)) for w in (FAST, SLOW, STEADY, CREEPING)]
    assert windows == [("1h", "5m"), ("6h", "30m"), ("1d", "2h"), ("3d", "6h")]
    alerts = {rule["alert"]: rule for rule in _alerts(rule_groups())}
    assert "> 0.144" in alerts["ReconcilerDeletionLagBudgetBurnFast"]["expr"]
    assert "ratio_rate1d{" in alerts["ReconcilerDeletionLagBudgetBurnSteady"]["expr"]
    assert "> 0.03" in alerts["ReconcilerDeletionLagBudgetBurnSteady"]["expr"]
    assert "ratio_rate3d{" in alerts["ReconcilerDeletionLagBudgetBurnCreeping"]["expr"]
    assert "> 0.01" in alerts["ReconcilerDeletionLagBudgetBurnCreeping"]["expr"]
    stricter = rule_groups(Slo(objective=0.999))
    assert "> 0.0144" in _alerts(stricter)[0]["expr"]


def test_a_burn_ticket_never_asks_for_less_than_one_x_and_a_burn_page_never_for_one_x_or_less() -> None:
    """Over 28 days the 3-day window would spend 10% at 0.93x: a ticket for a budget that lasts the period."""
    four_weeks = Slo(period_days=28)
    assert four_weeks.burn_rate(CREEPING) == 1.0
    assert four_weeks.burn_rate(STEADY) == 2.8
    assert four_weeks.burn_rate(FAST) == 13.44
    assert four_weeks.spent(CREEPING) == pytest.approx(3 / 28)


def test_the_ttl_service_lag_alert_is_a_ticket_and_the_workers_lag_alerts_page() -> None:
    alerts = {rule["alert"]: rule for rule in _alerts(rule_groups())}
    ttl = alerts["ReconcilerTtlServiceLagHigh"]
    assert ttl["labels"]["severity"] == "ticket"
    assert "reconciler_ttl_service_lag_seconds_bucket" in ttl["expr"]
    assert 'le="3600.0"' in ttl["expr"]
    pages = {name for name, rule in alerts.items() if rule["labels"]["severity"] == "page"}
    assert {"ReconcilerDeletionLagBudgetBurnFast", "ReconcilerDeletionLagBudgetBurnSlow"} <= pages
    assert not any("ttl_service" in alerts[name]["expr"] for name in pages)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objective": 1.0}, "between 0 and 1"),
        ({"threshold_seconds": 3000.0}, "not a lag bucket bound"),
        ({"period_days": 0}, "at least 1"),
        ({"objective": 0.9}, "could never fire"),  # 14.4 x 10% exceeds any error ratio
        ({"period_days": 1}, "would page within budget"),  # 2% of one day's budget in 1 h is 0.48x
    ],
)
def test_an_slo_that_no_series_can_measure_or_no_alert_can_serve_is_refused(
    kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Slo(**kwargs)  # type: ignore[arg-type]


def test_a_scaled_copy_keeps_the_series_names_and_shrinks_every_window() -> None:
    shipped, scaled = rule_groups(), rule_groups(scale=1 / 60)
    assert [r.get("record") for g in shipped for r in g["rules"]] == [
        r.get("record") for g in scaled for r in g["rules"]
    ]
    fast = _alerts(scaled)[0]
    assert fast["for"] == "2s"
    assert "[1m]" in scaled[0]["rules"][2]["expr"]  # the 1h window
    assert duration(3600) == "1h"
    assert duration(90) == "90s"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_every_alert_has_a_summary_a_description_and_a_runbook_section() -> None:
    anchors = _anchors(RUNBOOK.read_text())
    for rule in _alerts(rule_groups()):
        annotations = rule["annotations"]
        assert annotations["summary"]
        assert len(annotations["description"]) > 40
        anchor = annotations["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: docs/runbook.md has no section #{anchor}"
        assert rule["labels"]["severity"] in {"page", "ticket"}


def test_alert_runbook_urls_are_relative_by_default_and_absolute_from_a_base_url() -> None:
    base = "https://git.example.com/deletion-reconciler/blob/main/docs/runbook.md"
    anchors = _anchors(RUNBOOK.read_text())
    relative, absolute = _alerts(rule_groups()), _alerts(rule_groups(runbook=base))
    assert len(relative) == len(absolute) > 15
    for near, far in zip(relative, absolute, strict=True):
        anchor = near["annotations"]["runbook_url"].removeprefix("docs/runbook.md#")
        assert anchor in anchors, near["alert"]
        assert far["annotations"]["runbook_url"] == f"{base}#{anchor}"


def _aggregations(groups: list[dict[str, Any]]) -> list[str]:
    exprs = [rule["expr"] for group in groups for rule in group["rules"]]
    return [m for expr in exprs for m in re.findall(r"\b(?:by|on) \(([^)]*)\)", expr)]


def test_alert_rules_keep_the_given_labels_in_every_aggregation() -> None:
    shipped = _aggregations(rule_groups())
    assert shipped
    assert all(labels.split(", ")[0] == "job" and "namespace" not in labels for labels in shipped)
    kept = _aggregations(rule_groups(keep=["namespace", "cluster"]))
    assert len(kept) == len(shipped) + 2  # ReconcilerTargetMissing also names a vanished deployment
    assert all(labels.startswith("job, namespace, cluster") for labels in kept), kept
    missing = next(
        r for r in _alerts(rule_groups(keep=["namespace"])) if r["alert"] == "ReconcilerTargetMissing"
    )
    assert missing["expr"].startswith('absent(up{job="deletion-reconciler"})\nor\n')


@pytest.mark.parametrize("labels", [["table"], ["job"], ["le"], ["__name__"], ["name-space"], ["a", "a"]])
def test_alert_rules_refuse_a_kept_label_they_use_already_or_that_no_target_can_carry(
    labels: list[str],
) -> None:
    with pytest.raises(ValueError, match="label"):
        rule_groups(keep=labels)


def test_alert_rules_reserve_every_label_the_worker_exports() -> None:
    """A kept label that the worker's own metrics carry would be grouped twice or overwrite the worker's."""
    metrics = Metrics(CollectorRegistry())
    metrics.initialize(load_rules(DEMO_RULES).compile())
    exported = {label for family in metrics.registry.collect() for s in family.samples for label in s.labels}
    assert exported <= RESERVED
    assert Scope(keep=("namespace", "cluster")).by("table") == "by (job, namespace, cluster, table)"
