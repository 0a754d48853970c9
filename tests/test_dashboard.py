"""The overview dashboard: valid, deterministic, on the worker's real metrics, and in step with the alerts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dashboards.lag import burn_lines
from dashboards.overview import build, queries, render
from reconciler.observability.metrics import Metrics
from reconciler.observability.slo import (
    BURN_WINDOWS,
    CREEPING,
    FAST,
    JOB,
    SLOW,
    STEADY,
    TTL_SERVICE_LATE_RATIO,
    TTL_SERVICE_LATE_SECONDS,
    Slo,
    rule_groups,
)
from reconciler.observability.worker_alerts import (
    ITERATOR_AGE_PAGE_SECONDS,
    ITERATOR_AGE_TICKET_SECONDS,
    STALL_SECONDS,
)
from reconciler.rules import load_rules

DEMO_RULES = Path(__file__).parent.parent / "reconciler" / "demo" / "rules.toml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ON_JOB = 'job=~"$job"'
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}")
# Sample names each family type exports; a labelled family with no children yet exports no samples at all.
SAMPLES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
# Grafana unit ids used here (grafana-data/src/valueFormats/categories.ts); custom units are prefixed.
UNITS = {"none", "short", "percentunit", "s", "ops"}
SLOS = [Slo(), Slo(objective=0.995), Slo(objective=0.999, threshold_seconds=1800.0), Slo(period_days=28)]


def _dashboard(slo: Slo | None = None, job: str = JOB, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(render(slo, job, keep))
    return document


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, whether it follows its row or sits inside a collapsed one."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel["panels"]
        else:
            yield panel


def _panel(dashboard: dict[str, Any], title_start: str) -> dict[str, Any]:
    (panel,) = (p for p in _panels(dashboard) if p["title"].startswith(title_start))
    return panel


def _steps(panel: dict[str, Any]) -> list[tuple[float | None, str]]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [(step["value"], step["color"]) for step in steps]


def _exported_names() -> set[str]:
    metrics = Metrics(CollectorRegistry())
    metrics.initialize(load_rules(DEMO_RULES).compile())
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in SAMPLES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def _recorded_names(slo: Slo) -> set[str]:
    return {rule["record"] for group in rule_groups(slo) for rule in group["rules"] if "record" in rule}


def _bare_names(expr: str) -> list[str]:
    """Identifiers that are neither a selector with braces, a function call, nor a grouping label."""
    rest = SELECTOR.sub(" ", expr)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    rest = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", rest)
    return [m[1] for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", rest) if not m[2]]


def test_render_is_deterministic_canonical_json() -> None:
    text = render()
    assert text == render(Slo(), JOB)
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert build().to_json()["uid"] == "deletion-reconciler-overview"


def test_dashboard_settings() -> None:
    dashboard = _dashboard()
    assert dashboard["title"] == "Deletion reconciler: overview"
    assert dashboard["tags"] == ["deletion-reconciler"]
    assert (dashboard["refresh"], dashboard["timezone"], dashboard["editable"]) == ("30s", "utc", True)
    assert dashboard["time"] == {"from": "now-6h", "to": "now"}
    assert dashboard["description"]


def test_every_panel_and_target_reads_the_datasource_variable() -> None:
    panels = list(_panels(_dashboard()))
    assert panels
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


@pytest.mark.parametrize(("title", "expr"), queries(_dashboard()))
def test_every_selector_filters_on_the_job_variable(title: str, expr: str) -> None:
    selectors = SELECTOR.findall(expr)
    assert selectors, expr
    for name, matchers in selectors:
        assert ON_JOB in matchers, f"{title}: {name}"
    assert _bare_names(expr) == [], f"{title}: a metric without a selector"
    assert "[5m]" not in expr
    assert all(window == "$__rate_interval" for window in re.findall(r"\[([^\]]*)\]", expr))


@pytest.mark.parametrize("slo", SLOS, ids=repr)
def test_every_metric_is_exported_by_the_worker_or_recorded_by_the_rules(slo: Slo) -> None:
    known = _exported_names() | _recorded_names(slo) | {"up"}
    used = {name for _, expr in queries(_dashboard(slo)) for name, _ in SELECTOR.findall(expr)}
    assert used - known == set()
    assert {name for name in used if ":" in name} <= _recorded_names(slo)


def test_the_exported_names_include_families_without_samples_yet() -> None:
    """Failures and lag histograms have no series before the first event; their names must still count."""
    names = _exported_names()
    assert {"reconciler_failures_total", "reconciler_deletion_lag_seconds_bucket"} <= names
    assert "reconciler_last_successful_poll_age_seconds" in names


def test_every_panel_has_a_unit_and_a_description() -> None:
    for panel in _panels(_dashboard()):
        unit = panel["fieldConfig"]["defaults"]["unit"]
        assert unit in UNITS or unit.startswith("suffix:"), panel["title"]
        assert panel["description"].endswith("."), panel["title"]
        assert "good" in panel["description"].lower(), f"{panel['title']}: say what good looks like"


def test_every_series_has_a_legend() -> None:
    for panel in _panels(_dashboard()):
        for target in panel["targets"]:
            assert target["legendFormat"], panel["title"]
        if panel["type"] == "timeseries":
            assert panel["options"]["legend"]["showLegend"], panel["title"]


def test_lag_heatmap_reads_prometheus_buckets() -> None:
    heatmap = _panel(_dashboard(), "Pipeline lag distribution")
    assert heatmap["type"] == "heatmap"
    assert heatmap["options"]["calculate"] is False
    assert heatmap["options"]["yAxis"]["unit"] == "s"
    assert [t["format"] for t in heatmap["targets"]] == ["heatmap"]


@pytest.mark.parametrize("objective", [0.99, 0.995, 0.999])
def test_slo_stat_turns_green_at_the_objective(objective: float) -> None:
    panel = _panel(_dashboard(Slo(objective=objective)), "SLO compliance (30d)")
    assert _steps(panel) == [(None, "red"), (objective, "green")]
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_slo_panels_follow_the_period() -> None:
    dashboard = _dashboard(Slo(period_days=28))
    assert "ratio_rate28d" in _panel(dashboard, "SLO compliance (28d)")["targets"][0]["expr"]
    assert "remaining_ratio28d" in _panel(dashboard, "Error budget left (28d)")["targets"][0]["expr"]


@pytest.mark.parametrize("slo", SLOS, ids=repr)
def test_burn_rate_lines_are_the_alerts_burn_rates(slo: Slo) -> None:
    panel = _panel(_dashboard(slo), "Error-budget burn rate")
    tickets, pages = (
        (slo.burn_rate(CREEPING), slo.burn_rate(STEADY)),
        (slo.burn_rate(SLOW), slo.burn_rate(FAST)),
    )
    expected = sorted({*((rate, "orange") for rate in tickets), *((rate, "red") for rate in pages)})
    assert _steps(panel) == [(None, "green"), *expected]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    assert [t["legendFormat"] for t in panel["targets"]] == ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    assert all(t["expr"].endswith(f" / {slo.error_budget}") for t in panel["targets"])


def test_burn_alert_lines_keep_one_line_per_rate_and_a_page_wins_a_tie() -> None:
    """A week-long SLO asks 1x of both tickets: one orange line; no ticket colour over a page's rate."""
    week = Slo(period_days=7)
    assert week.burn_rate(STEADY) == week.burn_rate(CREEPING) == 1.0
    assert burn_lines(week) == [(1.0, "orange"), (week.burn_rate(SLOW), "red"), (week.burn_rate(FAST), "red")]
    assert len(burn_lines(Slo())) == len(BURN_WINDOWS)


@pytest.mark.parametrize("seconds", [3600.0, 1800.0])
def test_worker_lag_quantiles_draw_the_slo_threshold(seconds: float) -> None:
    panel = _panel(_dashboard(Slo(threshold_seconds=seconds)), "Worker lag p50 / p99")
    assert _steps(panel) == [(None, "green"), (seconds, "red")]


def test_slo_lag_row_shows_the_workers_lag_apart_from_the_ttl_service_lag() -> None:
    """The SLI panel reads the worker's own histograms only; DynamoDB's lag has its own panel and line."""
    dashboard = _dashboard()
    worker = " ".join(t["expr"] for t in _panel(dashboard, "Worker lag p50 / p99")["targets"])
    assert "reconciler_pipeline_lag_seconds_bucket" in worker
    assert "reconciler_enforcement_lag_seconds_bucket" in worker
    assert "ttl_service" not in worker
    assert "reconciler_deletion_lag_seconds" not in worker
    ttl = _panel(dashboard, "DynamoDB TTL service lag p50 / p99")
    assert all("reconciler_ttl_service_lag_seconds_bucket" in t["expr"] for t in ttl["targets"])
    assert _steps(ttl) == [(None, "green"), (TTL_SERVICE_LATE_SECONDS, "orange")]
    share = _panel(dashboard, "Late share: the worker vs DynamoDB's TTL service")
    assert _steps(share) == [(None, "green"), (TTL_SERVICE_LATE_RATIO, "orange")]
    assert [t["expr"].split("{")[0] for t in share["targets"]] == [
        "reconciler:deletion_lag_slo_errors:ratio_rate5m",
        "1 - (sum(rate(reconciler_ttl_service_lag_seconds_bucket",
    ]
    alerts = {
        rule["alert"]: rule["expr"] for group in rule_groups() for rule in group["rules"] if "alert" in rule
    }
    assert f"> {TTL_SERVICE_LATE_RATIO}" in alerts["ReconcilerTtlServiceLagHigh"]


def test_shard_thresholds_match_the_alert_rules() -> None:
    """The dashboard's copies of slo.py's literal thresholds appear in the alert expressions themselves."""
    alerts = {
        rule["alert"]: rule["expr"] for group in rule_groups() for rule in group["rules"] if "alert" in rule
    }
    assert alerts["ReconcilerShardStalled"].endswith(f" > {STALL_SECONDS}")
    assert alerts["ReconcilerIteratorAgeHigh"].endswith(f" > {ITERATOR_AGE_TICKET_SECONDS}")
    assert alerts["ReconcilerStreamRetentionAtRisk"].endswith(f" > {ITERATOR_AGE_PAGE_SECONDS}")
    dashboard = _dashboard()
    assert _steps(_panel(dashboard, "Seconds since last successful poll")) == [
        (None, "green"),
        (STALL_SECONDS, "red"),
    ]
    assert _steps(_panel(dashboard, "Iterator age per shard")) == [
        (None, "green"),
        (ITERATOR_AGE_TICKET_SECONDS, "orange"),
        (ITERATOR_AGE_PAGE_SECONDS, "red"),
    ]


@pytest.mark.parametrize(
    ("title", "expr"),
    [
        ("Leases held per replica", 'sum by (instance, table) (reconciler_leases_held{job=~"$job"})'),
        (
            "Lease transitions per second",
            'sum by (transition) (rate(reconciler_lease_transitions_total{job=~"$job"}[$__rate_interval]))',
        ),
        ("Records in flight per replica", 'sum by (instance) (reconciler_records_in_flight{job=~"$job"})'),
        ("Unleased shards", 'max by (table) (reconciler_shards_unleased{job=~"$job"})'),
        ("Live lease owners", 'max by (table) (reconciler_lease_owners{job=~"$job"})'),
    ],
)
def test_the_lease_panels_query_the_lease_metrics_across_replicas(title: str, expr: str) -> None:
    """Per replica where balance matters; the largest view for what every replica reports, as the alert."""
    dashboard = _dashboard()
    assert [t["expr"] for t in _panel(dashboard, title)["targets"]] == [expr]
    row = [p["title"] for p in dashboard["panels"]]
    assert row.index("Shards and replicas") < row.index(title)


def test_unleased_shards_turn_red_above_zero_as_the_alert_pages() -> None:
    alerts = {
        rule["alert"]: rule["expr"] for group in rule_groups() for rule in group["rules"] if "alert" in rule
    }
    assert "max by (job, table) (reconciler_shards_unleased" in alerts["ReconcilerShardsUncovered"]
    assert _steps(_panel(_dashboard(), "Unleased shards")) == [(None, "green"), (1e-9, "red")]


def test_poll_age_takes_the_freshest_replica_as_the_stall_alert_does() -> None:
    """A replica that lost a shard's lease keeps its stale series until its consumer stops."""
    alerts = {
        rule["alert"]: rule["expr"] for group in rule_groups() for rule in group["rules"] if "alert" in rule
    }
    assert alerts["ReconcilerShardStalled"].startswith("min by (job, table, shard) (")
    (target,) = _panel(_dashboard(), "Seconds since last successful poll")["targets"]
    assert target["expr"].startswith("min by (table, shard) (")


def test_variables_pick_the_datasource_and_the_job() -> None:
    variables = {v["name"]: v for v in _dashboard(job="reconciler-staging")["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    job = variables["job"]
    assert (job["type"], job["datasource"]) == ("query", DATASOURCE)
    assert job["query"] == "label_values(reconciler_build_info, job)"
    assert job["current"]["value"] == "reconciler-staging"
    assert job["includeAll"] is False
    assert _dashboard()["templating"]["list"][1]["current"]["value"] == JOB


def test_queries_returns_every_target_in_rows_or_not() -> None:
    dashboard = _dashboard()
    manual = [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p["targets"]]
    assert queries(dashboard) == manual
    assert {title for title, _ in manual} == {p["title"] for p in _panels(dashboard)}  # every panel queries
    collapsed: list[dict[str, Any]] = []  # as Grafana saves collapsed rows: the panels inside their row
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            collapsed.append({**panel, "collapsed": True, "panels": []})
        else:
            collapsed[-1]["panels"].append(panel)
    assert queries({"panels": collapsed}) == manual


def test_layout_is_tidy() -> None:
    """Every panel fits the 24-column grid, none overlap, and ids are unique."""
    items = _dashboard()["panels"]
    cells: dict[tuple[int, int], str] = {}
    for item in items:
        grid = item["gridPos"]
        assert grid["x"] + grid["w"] <= 24, item["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{item['title']} overlaps {cells[x, y]}"
                cells[x, y] = item["title"]
    assert len({item["id"] for item in items}) == len(items)
    rows = [item for item in items if item["type"] == "row"]
    assert [row["title"] for row in rows] == [
        "SLO: the worker's deletion lag",
        "Deletion lag: the worker's own vs DynamoDB's TTL service",
        "Throughput",
        "Failures and refusals",
        "Shards and replicas",
        "Shadow mode (dry run)",
        "Receipts and verification",
        "Scheduled jobs (orphan sweep)",
        "Sweeps: expiry enforcement and orphans",
        "Age rules",
    ]


def test_slo_dashboard_with_kept_labels_picks_one_deployment_in_every_query() -> None:
    """With --keep-labels the rules record per namespace: each query must pick one, not sum them all."""
    dashboard = _dashboard(keep=("namespace", "cluster"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for label in ("namespace", "cluster"):
        assert variables[label]["query"] == f'label_values(reconciler_build_info{{job=~"$job"}}, {label})'
        assert (variables[label]["includeAll"], variables[label]["multi"]) == (False, False)
    kept = 'job=~"$job",namespace=~"$namespace",cluster=~"$cluster"'
    exprs = [expr for _, expr in queries(dashboard)]
    assert len(exprs) == len(queries(_dashboard()))
    for expr in exprs:
        selectors = SELECTOR.findall(expr)
        assert selectors
        assert all(matchers.startswith(kept) for _, matchers in selectors), expr
    assert (
        "namespace" not in render()
    )  # the shipped dashboard, for one deployment per job, has no such filter
