"""The shipped Prometheus rules: valid for promtool, unit-tested alert by alert, in step with the worker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from promserver import promtool

from reconciler.observability.metrics import Metrics
from reconciler.observability.slo import FAST, SLOW, Slo, duration, rule_groups

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "reconciler.rules.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "prometheus" / "prometheusrule.yaml"
UNIT_TESTS = Path(__file__).parent / "prometheus" / "alerts.test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"


def _alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _run_unit_tests(directory: Path, groups: list[dict[str, Any]]) -> tuple[int, str]:
    """Run the committed promtool unit tests against ``groups`` (annotations left out, see the test file)."""
    for rule in _alerts(groups):
        rule.pop("annotations", None)
    (directory / "reconciler.rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (directory / UNIT_TESTS.name).write_text(UNIT_TESTS.read_text())
    result = promtool("test", "rules", str(directory / UNIT_TESTS.name))
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


def test_every_alert_passes_its_promtool_unit_tests(tmp_path: Path) -> None:
    code, output = _run_unit_tests(tmp_path, rule_groups())
    assert code == 0, output


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_silent() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
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


def test_the_rules_count_the_bucket_label_exactly_as_the_worker_exports_it() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.deletion_lag.labels("ttl").observe(10.0)
    exposition = generate_latest(metrics.registry).decode()
    le = Slo().le
    assert f'reconciler_deletion_lag_seconds_bucket{{cause="ttl",le="{le}"}} 1.0' in exposition
    assert f'le="{le}"' in RULES.read_text()


def test_burn_rates_and_thresholds_follow_the_sre_workbook_for_thirty_days() -> None:
    slo = Slo()
    assert slo.burn_rate(FAST) == 14.4
    assert slo.burn_rate(SLOW) == 6.0
    assert "> 0.144" in _alerts(rule_groups())[0]["expr"]
    stricter = rule_groups(Slo(objective=0.999))
    assert "> 0.0144" in _alerts(stricter)[0]["expr"]


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
