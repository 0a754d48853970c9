"""The deletion-lag SLO and every Prometheus rule built on the worker's metrics, as plain data.

One source for the plain rules file, the Prometheus Operator's PrometheusRule and the dashboard's SLO
panels (``scripts/generate.py`` writes them). The worker's own alerts are in ``worker_alerts.py``.

The SLO holds the worker to what it controls: its own lag. That is the pipeline's, from the REMOVE event to
the last artifact gone (``reconciler_pipeline_lag_seconds``), and the enforcement sweeper's, from an expired
item's enforcement deadline (TTL expiry plus the grace) to its delete
(``reconciler_enforcement_lag_seconds``); each observation is one event, good when under the threshold.
DynamoDB's TTL service decides when an expired item leaves the table ("typically within a few days"), so its
lag (``reconciler_ttl_service_lag_seconds``) is reported apart and opens a ticket, never a page: the sweeper
bounds it by deleting what is past the grace.

Burn-rate alerts follow the Google SRE workbook, "Alerting on SLOs", section 6, multiwindow, multi-burn-rate:
https://sre.google/workbook/alerting-on-slos/ . A window ``scale`` below 1 shrinks every window and ``for``
duration (for an end-to-end test on a real Prometheus); the shipped rules use scale 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

from reconciler.observability.metrics import LAG_BUCKETS
from reconciler.observability.promql import (
    DAY,
    HOUR,
    JOB,
    MINUTE,
    RUNBOOK,
    Rule,
    Scope,
    alert,
    duration,
    link_runbook,
    nominal,
    words,
)
from reconciler.observability.worker_alerts import worker_alerts

__all__ = ["BURN_WINDOWS", "JOB", "RUNBOOK", "BurnWindow", "Slo", "duration", "nominal", "rule_groups"]

PIPELINE_LAG = "reconciler_pipeline_lag_seconds"
ENFORCEMENT_LAG = "reconciler_enforcement_lag_seconds"
TTL_SERVICE_LAG = "reconciler_ttl_service_lag_seconds"
UNFINISHED = "reconciler_deletions_unfinished_total"

# ReconcilerTtlServiceLagHigh (a ticket): over TTL_SERVICE_LATE_RATIO of the expired items that reached the
# stream in the last TTL_SERVICE_WINDOW_SECONDS did so more than TTL_SERVICE_LATE_SECONDS after expiry, for
# TTL_SERVICE_HOLD_SECONDS. The sweeper deletes what is past the grace (15 minutes by default), so with it
# running no expired item reaches the stream that late; keep the bound above the grace and a sweep.
TTL_SERVICE_LATE_SECONDS = float(HOUR)
TTL_SERVICE_LATE_RATIO = 0.05
TTL_SERVICE_WINDOW_SECONDS = HOUR
TTL_SERVICE_HOLD_SECONDS = 30 * MINUTE


def le(seconds: float) -> str:
    """A bucket bound exactly as prometheus-client writes it (``3600.0``, never ``3600``)."""
    return str(floatToGoString(seconds))  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """Alert when ``budget_share`` of the period's error budget would be spent within ``long`` seconds."""

    name: str
    severity: str
    budget_share: float
    long: int
    short: int
    hold: int


# The SRE workbook's windows for a 30-day SLO: Table 5-8 ("Recommended parameters") pages at 14.4x over 1 h
# and 5 min (2% of the budget) and at 6x over 6 h and 30 min (5%), and opens a ticket at 1x over 3 days and
# 6 h (10%); the rules printed just above the table add a ticket at 3x over 1 day and 2 h (10% too). The
# short window is 1/12 of the long one (so an alert stops soon after the burn does), the hold half the short.
FAST = BurnWindow("Fast", "page", 0.02, HOUR, 5 * MINUTE, 2 * MINUTE)
SLOW = BurnWindow("Slow", "page", 0.05, 6 * HOUR, 30 * MINUTE, 15 * MINUTE)
STEADY = BurnWindow("Steady", "ticket", 0.10, DAY, 2 * HOUR, HOUR)
CREEPING = BurnWindow("Creeping", "ticket", 0.10, 3 * DAY, 6 * HOUR, 3 * HOUR)
BURN_WINDOWS = (FAST, SLOW, STEADY, CREEPING)


@dataclass(frozen=True, slots=True)
class Slo:
    """By default 99% of the worker's deletions take under 1 hour (its own lag, see above), over 30 days."""

    objective: float = 0.99
    threshold_seconds: float = 3600.0
    period_days: int = 30

    def __post_init__(self) -> None:
        if not 0 < self.objective < 1:
            raise ValueError(f"objective {self.objective} must lie strictly between 0 and 1")
        if self.threshold_seconds not in LAG_BUCKETS:
            # The SLI counts the bucket at the threshold: any other value has no series to count.
            raise ValueError(f"threshold {self.threshold_seconds}s is not a lag bucket bound: {LAG_BUCKETS}")
        if self.period_days < 1:
            raise ValueError("period_days must be at least 1")
        for window in BURN_WINDOWS:
            # An error ratio never exceeds 1, and a burn of 1x or less is within budget: either way the
            # alert would be useless (never fires, or pages on a healthy service).
            rate = self.burn_rate(window)
            name = f"the {window.name.lower()} burn alert ({rate}x)"
            if rate * self.error_budget >= 1:
                raise ValueError(f"objective {self.objective}: {name} could never fire; raise the objective")
            if rate <= 1 and window.severity == "page":
                raise ValueError(f"period {self.period_days} days: {name} would page within budget")

    @property
    def le(self) -> str:
        """The bucket label exactly as prometheus-client writes it (``3600.0``, never ``3600``)."""
        return le(self.threshold_seconds)

    @property
    def error_budget(self) -> float:
        return round(1 - self.objective, 10)

    def burn_rate(self, window: BurnWindow) -> float:
        """The burn rate that spends ``window.budget_share`` of the budget in ``window.long`` seconds.

        A ticket never asks for less than 1x: below that the budget outlasts the period (the 3-day window of a
        28-day SLO would otherwise open tickets at 0.93x).
        """
        rate = round(window.budget_share * self.period_days * DAY / window.long, 4)
        return max(rate, 1.0) if window.severity == "ticket" else rate

    def spent(self, window: BurnWindow) -> float:
        """The share of the period's budget that the window's burn rate spends in its long window."""
        return self.burn_rate(window) * window.long / (self.period_days * DAY)


ERRORS = "reconciler:deletion_lag_slo_errors:ratio_rate"
BUDGET_LEFT = "reconciler:deletion_lag_slo_budget:remaining_ratio"


def rule_groups(
    slo: Slo | None = None,
    *,
    job: str = JOB,
    scale: float = 1.0,
    runbook: str = RUNBOOK,
    keep: Sequence[str] = (),
) -> list[Rule]:
    """The recording and alerting rule groups, as the ``groups`` list of a Prometheus rules file.

    ``keep`` names target labels (``namespace``, ``cluster``) kept in every aggregation, so one Prometheus
    holding several deployments records and alerts per deployment. ``runbook`` prefixes every alert's
    ``runbook_url``: give an absolute URL for links that work from Alertmanager's notifications.
    """
    slo = slo or Slo()
    scope = Scope(job, tuple(keep))
    alerts = [*(_burn_alert(slo, scope, w, scale) for w in BURN_WINDOWS), _ttl_service_alert(scope, scale)]
    worker = worker_alerts(scope, scale)
    link_runbook((*alerts, *worker), runbook)
    return [
        {"name": "reconciler-slo-recording", "rules": _recording(slo, scope, scale)},
        {"name": "reconciler-slo-alerts", "rules": alerts},
        {"name": "reconciler-worker-alerts", "rules": worker},
    ]


def _windows(slo: Slo) -> list[int]:
    seconds = {w.long for w in BURN_WINDOWS} | {w.short for w in BURN_WINDOWS} | {slo.period_days * DAY}
    return sorted(seconds)


def _error_ratio(slo: Slo, scope: Scope, window: str) -> str:
    """The share of the worker's deletions over the threshold (its own lag), given-up ones counted late."""

    def rate(metric: str, *matchers: str) -> str:
        return f"sum {scope.by()} (rate({scope.select(metric, *matchers)}[{window}]))"

    bound = f'le="{slo.le}"'
    piped, enforced = rate(f"{PIPELINE_LAG}_bucket", bound), rate(f"{ENFORCEMENT_LAG}_bucket", bound)
    done = rate(f"{PIPELINE_LAG}_count")
    # `or ... * 0` keeps each sum defined for a worker that exports no such series: no sweeper deletions
    # yet, nothing given up. Deletions given up (dead-lettered) never reach a histogram: they count as late.
    good = f"{piped}\n+ ({enforced} or {piped} * 0)"
    total = (
        f"{done}\n+ ({rate(f'{ENFORCEMENT_LAG}_count')} or {done} * 0)\n+ ({rate(UNFINISHED)} or {done} * 0)"
    )
    return f"1 - (\n({good})\n/\n({total})\n)"


def _recording(slo: Slo, scope: Scope, scale: float) -> list[Rule]:
    rules: list[Rule] = [
        {"record": f"{ERRORS}{nominal(seconds)}", "expr": _error_ratio(slo, scope, duration(seconds * scale))}
        for seconds in _windows(slo)
    ]
    period = nominal(slo.period_days * DAY)
    rules.append(
        {
            "record": f"{BUDGET_LEFT}{period}",
            "expr": f"1 - ({ERRORS}{period} / {slo.error_budget})",
        }
    )
    return rules


def _burn_alert(slo: Slo, scope: Scope, window: BurnWindow, scale: float) -> Rule:
    rate = slo.burn_rate(window)
    threshold = round(rate * slo.error_budget, 10)
    long, short = nominal(window.long), nominal(window.short)
    on = f"{{{scope.on}}}"
    return alert(
        f"ReconcilerDeletionLagBudgetBurn{window.name}",
        f"{ERRORS}{long}{on} > {threshold}\nand\n{ERRORS}{short}{on} > {threshold}",
        hold=window.hold * scale,
        severity=window.severity,
        summary=f"Deletion-lag error budget burning faster than {rate}x ({long} and {short} windows)",
        description=(
            f"More than {threshold:.2%} of the worker's deletions took longer than"
            f" {duration(slo.threshold_seconds)} (from the REMOVE event, or from the enforcement deadline for"
            " items the sweeper deleted, until the last artifact was gone), over both the last"
            f" {long} and {short}. At this rate {slo.spent(window):.0%} of the {slo.period_days}-day error"
            f" budget is spent in {long}. DynamoDB's TTL lag before the event is not counted here."
            " Error ratio over the long window: {{ $value | humanizePercentage }}."
        ),
        anchor="reconcilerdeletionlagbudgetburn",
    )


def _ttl_service_alert(scope: Scope, scale: float) -> Rule:
    window = duration(TTL_SERVICE_WINDOW_SECONDS * scale)
    bound = f'le="{le(TTL_SERVICE_LATE_SECONDS)}"'
    on_time = f"sum {scope.by()} (rate({scope.select(f'{TTL_SERVICE_LAG}_bucket', bound)}[{window}]))"
    removed = f"sum {scope.by()} (rate({scope.select(f'{TTL_SERVICE_LAG}_count')}[{window}]))"
    late = words(int(TTL_SERVICE_LATE_SECONDS))
    return alert(
        "ReconcilerTtlServiceLagHigh",
        f"1 - (\n{on_time}\n/\n{removed}\n) > {TTL_SERVICE_LATE_RATIO}",
        hold=TTL_SERVICE_HOLD_SECONDS * scale,
        severity="ticket",
        summary=f"Expired items reach the stream over {late} after their TTL expiry",
        description="{{ $value | humanizePercentage }} of the expired items removed in the last"
        f" {words(TTL_SERVICE_WINDOW_SECONDS)} left their table more than {late} after their TTL expiry:"
        " DynamoDB's TTL service is slow, and the enforcement sweeper did not delete them first. Their"
        " deletions are late from expiry by that much, though the worker's own lag (the SLO) may be fine."
        " Nothing urgent: DynamoDB promises TTL deletion only within days.",
    )
