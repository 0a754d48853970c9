"""The ops overview dashboard, built with grafana-foundation-sdk from the same SLO as the alert rules.

``render()`` is what ``scripts/generate.py`` writes to ``dashboards/reconciler-overview.json``; ``queries()``
lists every PromQL expression in it, for tests that run them on a real Prometheus. Every expression selects
``job=~"$job"`` and every panel reads the ``${datasource}`` variable, so one JSON file serves any Grafana.
"""

from __future__ import annotations

import json
import string
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from reconciler.observability.slo import (
    BUDGET_LEFT,
    BURN_WINDOWS,
    DAY,
    ERRORS,
    FAST,
    ITERATOR_AGE_PAGE_SECONDS,
    ITERATOR_AGE_TICKET_SECONDS,
    JOB,
    SLOW,
    STALL_SECONDS,
    Slo,
    duration,
    nominal,
)

with warnings.catch_warnings():
    # The SDK warns at import time that the v1 dashboard schema has a v2 successor; v1 is the JSON that
    # Grafana's import page, file provisioning and the sidecar all accept, so the warning is not for us.
    warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as dashboard_builders
    from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.builder import Builder
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.variants import Dataquery
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

UID = "deletion-reconciler-overview"
TITLE = "Deletion reconciler: overview"
ON = 'job=~"$job"'
RATE = "$__rate_interval"
LAG = "reconciler_deletion_lag_seconds"

# Grafana thresholds apply at ">=", the alerts at "> 0": the step just above zero turns any event red.
ABOVE_ZERO = 1e-9
# The error-budget stat turns orange below this share of the budget left, so there is warning before zero.
BUDGET_LOW = 0.25
TIMES = "suffix:\N{MULTIPLICATION SIGN}"

Panels = list[Builder[model.Panel]]


def build(slo: Slo | None = None, job: str = JOB) -> model.Dashboard:
    """The dashboard as the SDK's model; ``job`` is only the default value of the ``job`` variable."""
    slo = slo or Slo()
    board = (
        dashboard_builders.Dashboard(TITLE)
        .uid(UID)
        .description(
            "Whether expired and requested deletions finish within the SLO, and why not: lag, throughput,"
            " failures and refusals, and the state of every shard and replica."
        )
        .tags(["deletion-reconciler"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(_datasource_variable())
        .with_variable(_job_variable(job))
    )
    rows = {
        "SLO: deletion lag": _slo_panels(slo),
        "Deletion lag": _lag_panels(slo),
        "Throughput": _throughput_panels(),
        "Failures and refusals": _failure_panels(),
        "Shards and replicas": [*_replica_panels(), *_lease_panels(), *_shard_panels()],
    }
    for title, panels in rows.items():
        board.with_row(dashboard_builders.Row(title))
        for panel in panels:
            board.with_panel(panel)
    dashboard = board.build()
    for number, item in enumerate(_walk(dashboard.panels or []), start=1):
        item.id_val = number  # stable ids, so links such as ?viewPanel=7 survive regeneration
    return dashboard


def render(slo: Slo | None = None, job: str = JOB) -> str:
    """The dashboard JSON, byte for byte the same for the same arguments."""
    return json.dumps(build(slo, job), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, in rows or not, of a rendered dashboard."""

    def panels(items: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    return [
        (panel.get("title", ""), target["expr"])
        for panel in panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def _walk(panels: list[model.Panel | model.RowPanel]) -> Iterator[model.Panel | model.RowPanel]:
    for panel in panels:
        yield panel
        if isinstance(panel, model.RowPanel):
            yield from panel.panels


def _datasource() -> common.DataSourceRef:
    return common.DataSourceRef(type_val="prometheus", uid="${datasource}")


def _datasource_variable() -> dashboard_builders.DatasourceVariable:
    return dashboard_builders.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _job_variable(job: str) -> dashboard_builders.QueryVariable:
    query = "label_values(reconciler_build_info, job)"
    return (
        dashboard_builders.QueryVariable("job")
        .label("Job")
        .datasource(_datasource())
        .query(query)
        .definition(query)
        .current(model.VariableOption(selected=True, text=job, value=job))
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .include_all(False)  # noqa: FBT003 - the SDK's setter takes a plain bool
        .multi(False)  # noqa: FBT003 - likewise
    )


def _selector(metric: str) -> str:
    return f"{metric}{{{ON}}}"


def _quantile(q: float, histogram: str) -> str:
    rate = f"rate({_selector(histogram + '_bucket')}[{RATE}])"
    return f"histogram_quantile({q}, sum by (le, cause) ({rate}))"


def _target(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery().datasource(_datasource()).expr(expr).legend_format(legend).ref_id(ref).range()
    )


def _targets(*queries: tuple[str, str]) -> list[Builder[Dataquery]]:
    return [
        _target(expr, legend, ref)
        for ref, (expr, legend) in zip(string.ascii_uppercase, queries, strict=False)
    ]


def _thresholds(base: str, *steps: tuple[float, str]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=None, color=base), *(model.Threshold(v, c) for v, c in steps)])
    )


def _series(title: str, description: str, unit: str, targets: list[Builder[Dataquery]]) -> timeseries.Panel:
    """A time series 8 columns wide, with a visible legend and a tooltip that lists every series."""
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(_datasource())
        .targets(targets)
        .unit(unit)
        .span(8)
        .height(8)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)  # noqa: FBT003 - the SDK's setter takes a plain bool
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )


def _with_lines(panel: timeseries.Panel, *steps: tuple[float, str]) -> timeseries.Panel:
    """Dashed threshold lines over a palette-coloured series, for limits that alerts also use."""
    return panel.thresholds(_thresholds("green", *steps)).thresholds_style(
        common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
    )


def _red_above_zero(panel: timeseries.Panel) -> timeseries.Panel:
    """For events that should not happen: the series is green at zero and turns red as soon as one does."""
    return (
        panel.thresholds(_thresholds("green", (ABOVE_ZERO, "red")))
        .color_scheme(dashboard_builders.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .gradient_mode(common.GraphGradientMode.SCHEME)
    )


def _stat(title: str, description: str, unit: str, targets: list[Builder[Dataquery]]) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(_datasource())
        .targets(targets)
        .unit(unit)
        .span(6)
        .height(8)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )


def _slo_panels(slo: Slo) -> Panels:
    period, days = nominal(slo.period_days * DAY), f"{slo.period_days}d"
    compliance = _stat(
        f"SLO compliance ({days})",
        f"Share of deletions in the last {days} with every artifact gone within"
        f" {duration(slo.threshold_seconds)} of expiry (or of the request): good is at or above the"
        f" {slo.objective:.2%} objective, in green. No value means no deletion was measured in the period.",
        "percentunit",
        _targets((f"1 - {_selector(ERRORS + period)}", "compliance")),
    ).decimals(3)
    budget = _stat(
        f"Error budget left ({days})",
        f"Share of the {days} error budget ({slo.error_budget:.2%} of deletions may be late) not yet"
        f" spent: good is above {BUDGET_LOW:.0%}, in green; orange as it runs low; red once spent.",
        "percentunit",
        _targets((_selector(BUDGET_LEFT + period), "budget left")),
    ).decimals(1)
    windows = sorted({seconds for w in BURN_WINDOWS for seconds in (w.short, w.long)})
    burn = _series(
        "Error-budget burn rate",
        f"How many times faster than sustainable the error budget is spent (1x spends it in exactly {days}):"
        f" good is below 1x. Dashed lines are the alerts: {slo.burn_rate(SLOW)}x over"
        f" {nominal(SLOW.long)} and {nominal(SLOW.short)} opens a ticket, {slo.burn_rate(FAST)}x over"
        f" {nominal(FAST.long)} and {nominal(FAST.short)} pages.",
        TIMES,
        _targets(*((f"{_selector(ERRORS + nominal(s))} / {slo.error_budget}", nominal(s)) for s in windows)),
    ).span(12)
    return [
        compliance.thresholds(_thresholds("red", (slo.objective, "green"))),
        budget.thresholds(_thresholds("red", (0, "orange"), (BUDGET_LOW, "green"))),
        _with_lines(burn.decimals(1), (slo.burn_rate(SLOW), "orange"), (slo.burn_rate(FAST), "red")),
    ]


def _lag_heatmap(slo: Slo) -> heatmap.Panel:
    # rate, not increase: at a step shorter than the window, increases overlap and the cells overcount.
    buckets = f"sum by (le) (rate({_selector(LAG + '_bucket')}[{RATE}]))"
    return (
        heatmap.Panel()
        .title("Deletion lag distribution")
        .description(
            "Deletions per second finishing in each lag bucket, from expiry (or request) to the last artifact"
            f" gone: good is everything in the buckets below {duration(slo.threshold_seconds)}."
        )
        .datasource(_datasource())
        .targets([_target(buckets, "{{le}}").format(PromQueryFormat.HEATMAP)])
        .unit("ops")
        .span(8)
        .height(8)
        .calculate(False)  # noqa: FBT003 - Prometheus has bucketed the data already
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .tooltip(heatmap.HeatmapTooltip().mode(common.TooltipDisplayMode.SINGLE).y_histogram(True))  # noqa: FBT003
    )


def _lag_panels(slo: Slo) -> Panels:
    quantiles = _series(
        "Deletion lag p50 / p99 by cause",
        "Median and 99th percentile of the time from expiry (or request) until every artifact was gone,"
        f" per cause: good is p99 under the dashed SLO line at {duration(slo.threshold_seconds)}.",
        "s",
        _targets((_quantile(0.5, LAG), "p50 {{cause}}"), (_quantile(0.99, LAG), "p99 {{cause}}")),
    )
    split = _series(
        "TTL service lag vs pipeline lag (p99)",
        "Where deletion lag comes from: TTL service lag runs from expiry to the REMOVE event (DynamoDB's own"
        " delay, typically within a few days and outside our control); pipeline lag runs from the REMOVE"
        " event to the last artifact gone (this worker). Good is a pipeline lag of minutes.",
        "s",
        _targets(
            (_quantile(0.99, "reconciler_ttl_service_lag_seconds"), "DynamoDB TTL service {{cause}}"),
            (_quantile(0.99, "reconciler_pipeline_lag_seconds"), "this worker {{cause}}"),
        ),
    )
    return [_lag_heatmap(slo), _with_lines(quantiles, (slo.threshold_seconds, "red")), split]


def _rate(by: str, metric: str, function: str = "rate") -> str:
    return f"sum by ({by}) ({function}({_selector(metric)}[{RATE}]))"


def _throughput_panels() -> Panels:
    return [
        _series(
            "Stream records per second by cause",
            "Stream records read, by why the item went (TTL expiry, customer request, or none for"
            " inserts and updates): good is a rate that follows the tables' write and expiry traffic.",
            "ops",
            _targets((_rate("cause", "reconciler_stream_records_total"), "{{cause}}")),
        ),
        _series(
            "Artifacts deleted per second by kind",
            "Object versions, delete markers and linked items handled, by outcome: good is deletions"
            " tracking removed items, with refused staying at zero.",
            "ops",
            _targets((_rate("kind, outcome", "reconciler_artifacts_total"), "{{kind}} {{outcome}}")),
        ),
        _series(
            "Record outcomes per second",
            "What became of each stream record: deleted, ignored, filtered (a removal the cascade rules"
            " exclude), dead-lettered or retried; good is no retries, since they hold a shard's checkpoint.",
            "ops",
            _targets((_rate("outcome", "reconciler_record_outcomes_total"), "{{outcome}}")),
        ),
    ]


def _failure_panels() -> Panels:
    unsafe = _rate("table, reason", "reconciler_unsafe_targets_total", "increase")
    dead = _rate("kind", "reconciler_dead_letters_total", "increase")
    failures = _series(
        "Failures per second by stage and error",
        "Failed attempts to finish a record or poll a shard, by stage and error type: good is no data"
        " or a flat zero; anything above zero is red.",
        "ops",
        _targets((_rate("stage, error", "reconciler_failures_total"), "{{stage}} {{error}}")),
    )
    refused = _series(
        "Unsafe targets refused",
        "Deletion targets outside their item's scope, refused and dead-lettered for review, by table and"
        " reason: good is zero; any bar is a red flag about the data or the rules.",
        "short",
        _targets((unsafe, "{{table}} {{reason}}")),
    )
    letters = _series(
        "Dead letters written",
        "Records the worker recorded for an operator instead of finishing, by kind: good is zero; each"
        " bar needs a look in the dead-letter table.",
        "short",
        _targets((dead, "{{kind}}")),
    )
    # Every replica counts the same table: the largest count is the freshest, not their sum.
    pending = _series(
        "Dead letters pending by kind",
        "Dead letters waiting for a redrive or a person, by kind, as the replicas last counted them (every"
        " minute): good is zero. `reconciler dead-letters list` names them; `redrive` finishes failed ones.",
        "short",
        _targets((f"max by (kind) ({_selector('reconciler_dead_letters_pending')})", "{{kind}}")),
    )
    bars = (refused, letters)
    return [
        _red_above_zero(failures),
        *(_red_above_zero(p.draw_style(common.GraphDrawStyle.BARS)) for p in bars),
        _red_above_zero(pending),
    ]


def _replica_panels() -> Panels:
    shards = _stat(
        "Shards consuming",
        "Stream shards this job's replicas consume now: good is every open shard of every source table.",
        "none",
        _targets((f"sum({_selector('reconciler_shards_consuming')})", "shards")),
    ).thresholds(_thresholds("red", (1, "green")))
    replicas = _stat(
        "Replicas up",
        "Replicas Prometheus scrapes successfully: good is the Deployment's replica count, red at zero.",
        "none",
        _targets((f"sum({_selector('up')})", "replicas")),
    ).thresholds(_thresholds("red", (1, "green")))
    version = (
        _stat(
            "Running version",
            "Versions (and Pythons) running, with how many replicas run each: good is one line, two during"
            " a rollout.",
            "none",
            [
                _target(
                    f"count by (version, python) ({_selector('reconciler_build_info')})",
                    "{{version}} (Python {{python}})",
                ).instant()
            ],
        )
        .span(12)
        .thresholds(_thresholds("blue"))
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .graph_mode(common.BigValueGraphMode.NONE)
    )
    return [shards.height(5), replicas.height(5), version.height(5)]


def _lease_panels() -> Panels:
    held = _series(
        "Leases held per replica",
        "Shard leases each replica holds, by table: good is an even share per replica, none at"
        " RECONCILER_MAX_LEASES; during a rollout the new pod takes its share from the others.",
        "none",
        _targets(
            (f"sum by (instance, table) ({_selector('reconciler_leases_held')})", "{{instance}} {{table}}")
        ),
    )
    transitions = _series(
        "Lease transitions per second",
        "Leases taken (free), expired (taken from a replica that stopped renewing), stolen (to balance),"
        " released (on shutdown) and lost, across replicas: good is flat at zero between rollouts;"
        " stolen and lost together all along is the churn alert.",
        "ops",
        _targets((_rate("transition", "reconciler_lease_transitions_total"), "{{transition}}")),
    )
    in_flight = _series(
        "Records in flight per replica",
        "Stream records read and not yet finished on each replica: good is well below"
        " RECONCILER_MAX_RECORDS_IN_FLIGHT (256 by default), which bounds memory; flat at it means the"
        " replica is saturated.",
        "short",
        _targets((f"sum by (instance) ({_selector('reconciler_records_in_flight')})", "{{instance}}")),
    )
    unleased = _series(
        "Unleased shards",
        "Readable shards no live replica holds, the largest count any replica saw at its last lease pass:"
        " good is zero; a failover shows a short spike, and five minutes above zero pages.",
        "none",
        _targets((f"max by (table) ({_selector('reconciler_shards_unleased')})", "{{table}}")),
    ).span(12)
    owners = _series(
        "Live lease owners",
        "Replicas holding leases on each table's stream, as the replicas see them (the largest view):"
        " good is the number of running replicas, or the shard count if that is smaller.",
        "none",
        _targets((f"max by (table) ({_selector('reconciler_lease_owners')})", "{{table}}")),
    ).span(12)
    return [held, transitions, in_flight, _red_above_zero(unleased), owners]


def _shard_panels() -> Panels:
    by_shard, poll = "max by (table, shard)", "reconciler_last_successful_poll_age_seconds"
    iterator_age = _series(
        "Iterator age per shard",
        "Age of the newest record read from each shard: good is seconds; the dashed lines are the alerts"
        f" ({duration(ITERATOR_AGE_TICKET_SECONDS)} opens a ticket, {duration(ITERATOR_AGE_PAGE_SECONDS)}"
        " pages, as records are trimmed after 24 h).",
        "s",
        _targets((f"{by_shard} ({_selector('reconciler_iterator_age_seconds')})", "{{table}} {{shard}}")),
    ).span(12)
    poll_age = _series(
        "Seconds since last successful poll",
        "Time since a consumer of each shard (on any replica) last completed a GetRecords call: good is a"
        f" few seconds; at the dashed line ({duration(STALL_SECONDS)}) the stall alert pages: a stuck"
        " consumer reports no lag.",
        "s",
        # min across replicas, as the stall alert: a replica that lost the lease keeps the series a while.
        _targets((f"min by (table, shard) ({_selector(poll)})", "{{table}} {{shard}}")),
    ).span(12)
    return [
        _with_lines(
            iterator_age, (ITERATOR_AGE_TICKET_SECONDS, "orange"), (ITERATOR_AGE_PAGE_SECONDS, "red")
        ),
        _with_lines(poll_age, (STALL_SECONDS, "red")),
    ]
