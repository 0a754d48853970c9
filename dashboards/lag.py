"""The dashboard's SLO and lag rows: the worker's own lag (the SLI) beside DynamoDB's TTL service lag.

The SLO counts what the worker controls (the pipeline from the REMOVE event, the sweeper from the enforcement
deadline); how late DynamoDB's TTL service removes expired items is shown next to it, never mixed in.
"""

from __future__ import annotations

import warnings

from dashboards.panels import (
    ON,
    RATE,
    TIMES,
    Panels,
    datasource,
    quantile,
    selector,
    series,
    stat_panel,
    target,
    targets,
    thresholds,
    with_lines,
)
from reconciler.observability.promql import DAY, duration, nominal
from reconciler.observability.slo import (
    BUDGET_LEFT,
    BURN_WINDOWS,
    ENFORCEMENT_LAG,
    ERRORS,
    PIPELINE_LAG,
    TTL_SERVICE_LAG,
    TTL_SERVICE_LATE_RATIO,
    TTL_SERVICE_LATE_SECONDS,
    Slo,
    le,
)

with warnings.catch_warnings():
    # The SDK warns at import time that the v1 dashboard schema has a v2 successor (see panels.py).
    warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
    from grafana_foundation_sdk.builders import heatmap, timeseries
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

# The error-budget stat turns orange below this share of the budget left, so there is warning before zero.
BUDGET_LOW = 0.25
END_TO_END = "reconciler_deletion_lag_seconds"
# Line colours of the burn-rate panel: the alert's severity.
SEVERITY_COLOURS = {"ticket": "orange", "page": "red"}
ACTIONS = {"ticket": "opens a ticket", "page": "pages"}


def slo_panels(slo: Slo) -> Panels:
    period, days = nominal(slo.period_days * DAY), f"{slo.period_days}d"
    compliance = stat_panel(
        f"SLO compliance ({days})",
        f"Share of the worker's deletions in the last {days} done within {duration(slo.threshold_seconds)}:"
        " from the REMOVE event (or, for items the sweeper deleted, from their enforcement deadline) to the"
        f" last artifact gone. Good is at or above the {slo.objective:.2%} objective, in green. DynamoDB's"
        " TTL lag is not counted (next row). No value means no deletion was measured in the period.",
        "percentunit",
        targets((f"1 - {selector(ERRORS + period)}", "compliance")),
    ).decimals(3)
    budget = stat_panel(
        f"Error budget left ({days})",
        f"Share of the {days} error budget ({slo.error_budget:.2%} of deletions may be late) not yet"
        f" spent: good is above {BUDGET_LOW:.0%}, in green; orange as it runs low; red once spent.",
        "percentunit",
        targets((selector(BUDGET_LEFT + period), "budget left")),
    ).decimals(1)
    return [
        compliance.thresholds(thresholds("red", (slo.objective, "green"))),
        budget.thresholds(thresholds("red", (0, "orange"), (BUDGET_LOW, "green"))),
        _burn_rate(slo),
    ]


def burn_lines(slo: Slo) -> list[tuple[float, str]]:
    """The burn-rate alerts' thresholds as dashed lines, ascending, coloured by severity (pages win a tie)."""
    lines: dict[float, str] = {}
    for window in sorted(BURN_WINDOWS, key=lambda w: w.severity == "page"):
        lines[slo.burn_rate(window)] = SEVERITY_COLOURS[window.severity]
    return sorted(lines.items())


def _burn_rate(slo: Slo) -> timeseries.Panel:
    windows = sorted({seconds for w in BURN_WINDOWS for seconds in (w.short, w.long)})
    alerts = "; ".join(
        f"{slo.burn_rate(w)}x over {nominal(w.long)} and {nominal(w.short)} {ACTIONS[w.severity]}"
        for w in BURN_WINDOWS
    )
    burn = series(
        "Error-budget burn rate",
        f"How many times faster than sustainable the error budget is spent (1x spends it in exactly"
        f" {slo.period_days}d): good is below 1x. Dashed lines are the alerts, orange a ticket and red a"
        f" page: {alerts}.",
        TIMES,
        targets(*((f"{selector(ERRORS + nominal(s))} / {slo.error_budget}", nominal(s)) for s in windows)),
    ).span(12)
    return with_lines(burn.decimals(1), *burn_lines(slo))


def lag_panels(slo: Slo) -> Panels:
    threshold = duration(slo.threshold_seconds)
    worker = series(
        "Worker lag p50 / p99 (the SLI)",
        "The worker's own lag, what the SLO counts: the pipeline's from the REMOVE event until every artifact"
        " was gone, per cause, and the sweeper's from an expired item's enforcement deadline (TTL expiry plus"
        f" the grace) until it deleted the item. Good is every p99 under the dashed SLO line at {threshold}.",
        "s",
        targets(
            (quantile(0.5, PIPELINE_LAG), "pipeline p50 {{cause}}"),
            (quantile(0.99, PIPELINE_LAG), "pipeline p99 {{cause}}"),
            (quantile(0.99, ENFORCEMENT_LAG, by="table"), "sweeper p99 {{table}}"),
        ),
    )
    late = duration(TTL_SERVICE_LATE_SECONDS)
    ttl = series(
        "DynamoDB TTL service lag p50 / p99",
        "From TTL expiry to the REMOVE event, per cause: DynamoDB's own delay (it promises deletion only"
        " within days), not the worker's. Good is under the dashed line at"
        f" {late}: the sweeper deletes what is past the enforcement grace, so only a slow TTL service with"
        " no sweeper covering for it crosses the line (a ticket, never a page).",
        "s",
        targets(
            (quantile(0.5, TTL_SERVICE_LAG), "p50 {{cause}}"),
            (quantile(0.99, TTL_SERVICE_LAG), "p99 {{cause}}"),
        ),
    )
    return [
        with_lines(worker, (slo.threshold_seconds, "red")),
        with_lines(ttl, (TTL_SERVICE_LATE_SECONDS, "orange")),
        _late_share(slo),
        _heatmap(slo),
        _removed_by(),
        _end_to_end(),
    ]


def _late_share(slo: Slo) -> timeseries.Panel:
    bound = f'le="{le(TTL_SERVICE_LATE_SECONDS)}"'
    on_time = f"sum(rate({TTL_SERVICE_LAG}_bucket{{{ON},{bound}}}[{RATE}]))"
    removed = f"sum(rate({TTL_SERVICE_LAG}_count{{{ON}}}[{RATE}]))"
    late = duration(TTL_SERVICE_LATE_SECONDS)
    panel = series(
        "Late share: the worker vs DynamoDB's TTL service",
        f"Share of the worker's deletions over the SLO's {duration(slo.threshold_seconds)} (last 5 minutes,"
        f" the SLI), beside the share of expired items that reached the stream over {late} after expiry."
        " Good is both near zero. Only the worker's share spends the error budget; the TTL service's opens a"
        f" ticket above the dashed line at {TTL_SERVICE_LATE_RATIO:.0%}.",
        "percentunit",
        targets(
            (selector(f"{ERRORS}5m"), "worker, over the SLO threshold"),
            (f"1 - ({on_time} / {removed})", f"DynamoDB TTL service, over {late}"),
        ),
    )
    return with_lines(panel, (TTL_SERVICE_LATE_RATIO, "orange"))


def _removed_by() -> timeseries.Panel:
    removes = f'reconciler_stream_records_total{{{ON},event="REMOVE",cause=~"ttl|expired"}}'
    return series(
        "Expired items removed per second, by whom",
        "REMOVE events of expired items: `ttl` by DynamoDB's TTL service, `expired` by anyone else (the"
        " sweeper, a global table's replica), and the sweeper's own deletions. Good is the TTL service doing"
        " most of it; a growing sweeper share means DynamoDB is slow and the sweeper is covering for it.",
        "ops",
        targets(
            (f"sum by (cause) (rate({removes}[{RATE}]))", "REMOVE {{cause}}"),
            (f"sum(rate({selector(ENFORCEMENT_LAG + '_count')}[{RATE}]))", "deleted by the sweeper"),
        ),
    )


def _end_to_end() -> timeseries.Panel:
    return series(
        "End-to-end deletion lag p50 / p99 by cause",
        "From TTL expiry (or the customer's request) until every artifact was gone: the TTL service's lag"
        " plus the worker's, as a user sees it. Reported, not the SLI. Good is p99 within the enforcement"
        " grace plus the SLO threshold.",
        "s",
        targets((quantile(0.5, END_TO_END), "p50 {{cause}}"), (quantile(0.99, END_TO_END), "p99 {{cause}}")),
    )


def _heatmap(slo: Slo) -> heatmap.Panel:
    # rate, not increase: at a step shorter than the window, increases overlap and the cells overcount.
    buckets = f"sum by (le) (rate({selector(PIPELINE_LAG + '_bucket')}[{RATE}]))"
    return (
        heatmap.Panel()
        .title("Pipeline lag distribution")
        .description(
            "Deletions per second finishing in each pipeline lag bucket, from the REMOVE event to the last"
            f" artifact gone: good is everything in the buckets below {duration(slo.threshold_seconds)}."
        )
        .datasource(datasource())
        .targets([target(buckets, "{{le}}").format(PromQueryFormat.HEATMAP)])
        .unit("ops")
        .span(8)
        .height(8)
        .calculate(False)  # noqa: FBT003 - Prometheus has bucketed the data already
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .tooltip(heatmap.HeatmapTooltip().mode(common.TooltipDisplayMode.SINGLE).y_histogram(True))  # noqa: FBT003
    )
