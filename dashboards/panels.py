"""Panel builders shared by the dashboard's rows: one look for every series, stat and threshold line.

Every expression selects ``job=~"$job"`` (``ON``) and every panel reads the ``${datasource}`` variable;
``overview.build`` adds the matchers of labels kept per deployment beside ``ON``.
"""

from __future__ import annotations

import string
import warnings

with warnings.catch_warnings():
    # The SDK warns at import time that the v1 dashboard schema has a v2 successor; v1 is the JSON that
    # Grafana's import page, file provisioning and the sidecar all accept, so the warning is not for us.
    warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as dashboard_builders
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.builder import Builder
    from grafana_foundation_sdk.cog.variants import Dataquery
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as model

ON = 'job=~"$job"'
RATE = "$__rate_interval"
# Grafana thresholds apply at ">=", the alerts at "> 0": the step just above zero turns any event red.
ABOVE_ZERO = 1e-9
TIMES = "suffix:\N{MULTIPLICATION SIGN}"

Panels = list[Builder[model.Panel]]


def datasource() -> common.DataSourceRef:
    return common.DataSourceRef(type_val="prometheus", uid="${datasource}")


def selector(metric: str) -> str:
    return f"{metric}{{{ON}}}"


def quantile(q: float, histogram: str, by: str = "cause") -> str:
    buckets = f"rate({selector(histogram + '_bucket')}[{RATE}])"
    return f"histogram_quantile({q}, sum by (le, {by}) ({buckets}))"


def target(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery().datasource(datasource()).expr(expr).legend_format(legend).ref_id(ref).range()
    )


def targets(*queries: tuple[str, str]) -> list[Builder[Dataquery]]:
    return [
        target(expr, legend, ref)
        for ref, (expr, legend) in zip(string.ascii_uppercase, queries, strict=False)
    ]


def thresholds(base: str, *steps: tuple[float, str]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=None, color=base), *(model.Threshold(v, c) for v, c in steps)])
    )


def series(title: str, description: str, unit: str, targets: list[Builder[Dataquery]]) -> timeseries.Panel:
    """A time series 8 columns wide, with a visible legend and a tooltip that lists every series."""
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource())
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


def with_lines(panel: timeseries.Panel, *steps: tuple[float, str]) -> timeseries.Panel:
    """Dashed threshold lines over a palette-coloured series, for limits that alerts also use."""
    return panel.thresholds(thresholds("green", *steps)).thresholds_style(
        common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
    )


def red_above_zero(panel: timeseries.Panel) -> timeseries.Panel:
    """For events that should not happen: the series is green at zero and turns red as soon as one does."""
    return (
        panel.thresholds(thresholds("green", (ABOVE_ZERO, "red")))
        .color_scheme(dashboard_builders.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .gradient_mode(common.GraphGradientMode.SCHEME)
    )


def stat_panel(title: str, description: str, unit: str, targets: list[Builder[Dataquery]]) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(datasource())
        .targets(targets)
        .unit(unit)
        .span(6)
        .height(8)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )


def rate_by(by: str, metric: str, function: str = "rate") -> str:
    return f"sum by ({by}) ({function}({selector(metric)}[{RATE}]))"
