"""The deletion-lag SLO and every Prometheus rule built on the worker's metrics, as plain data.

One source for the plain rules file, the Prometheus Operator's PrometheusRule and the dashboard's SLO
panels (``scripts/generate.py`` writes them). Adding an alert for a new metric is one more ``_alert(...)``
entry below, one runbook section and one promtool test case.

Burn-rate alerts follow the Google SRE workbook, "Alerting on SLOs", multiwindow, multi-burn-rate:
https://sre.google/workbook/alerting-on-slos/ . A window ``scale`` below 1 shrinks every window and ``for``
duration (for an end-to-end test on a real Prometheus); the shipped rules use scale 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client.utils import floatToGoString

from reconciler.observability.metrics import LAG_BUCKETS

JOB = "deletion-reconciler"
RUNBOOK = "docs/runbook.md"
HOUR = 3600
MINUTE = 60
DAY = 86400

Rule = dict[str, Any]

# Alert thresholds; the dashboard draws the shard ones as lines too.
STALL_SECONDS = 10 * MINUTE  # no successful poll for this long: ReconcilerShardStalled
DOWN_SECONDS = 5 * MINUTE  # ReconcilerTargetDown: every replica
REPLICA_DOWN_SECONDS = 15 * MINUTE  # ReconcilerReplicaDown: one replica, while others answer
MISSING_SECONDS = 10 * MINUTE  # ReconcilerTargetMissing
SOURCE_DOWN_SECONDS = 10 * MINUTE  # a source table not found at discovery: ReconcilerSourceUnavailable
RESTART_WINDOW_SECONDS = 30 * MINUTE  # ReconcilerRestarting: more than RESTARTS restarts in this window
RESTARTS = 2
FAILING_SECONDS = 15 * MINUTE  # ReconcilerShardFailing: stream reads failing in every window this long
FAILURE_RATIO = 0.05  # ReconcilerDeletionFailures
ITERATOR_AGE_TICKET_SECONDS = 30 * MINUTE  # ReconcilerIteratorAgeHigh
ITERATOR_AGE_PAGE_SECONDS = 12 * HOUR  # half of 24 h stream retention: ReconcilerStreamRetentionAtRisk
# ReconcilerShardsUncovered: readable shards no live replica holds for this long. A failover takes
# lease_seconds (30 s) for the dead replica's leases to expire, then leases_to_take (2) per heartbeat (10 s)
# per survivor: 64 shards move to one survivor in under 4 minutes.
UNCOVERED_SECONDS = 5 * MINUTE
# ReconcilerLeaseChurn: leases stolen or lost (a steal counts twice: `stolen` at the taker, `lost` at the
# loser) over CHURN_WINDOW_SECONDS, more than CHURN_PER_SHARD times the table's leases (at least
# CHURN_FLOOR), in every window for CHURN_WINDOW_SECONDS. A rolling update or a replica's restart moves
# each shard at most once (each new pod takes its share once): under 2 per shard, and over in minutes.
CHURN_WINDOW_SECONDS = 30 * MINUTE
CHURN_PER_SHARD = 2
CHURN_FLOOR = 4


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """Alert when ``budget_share`` of the period's error budget would be spent within ``long`` seconds."""

    name: str
    severity: str
    budget_share: float
    long: int
    short: int
    hold: int


@dataclass(frozen=True, slots=True)
class Slo:
    """By default 99% of deleted items have every artifact gone within 1 hour of expiry, over 30 days."""

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
            if rate <= 1:
                raise ValueError(f"period {self.period_days} days: {name} would page within budget")

    @property
    def le(self) -> str:
        """The bucket label exactly as prometheus-client writes it (``3600.0``, never ``3600``)."""
        return str(floatToGoString(self.threshold_seconds))  # type: ignore[no-untyped-call]

    @property
    def error_budget(self) -> float:
        return round(1 - self.objective, 10)

    def burn_rate(self, window: BurnWindow) -> float:
        """The burn rate that spends ``window.budget_share`` of the budget in ``window.long`` seconds."""
        return round(window.budget_share * self.period_days * DAY / window.long, 4)


# The SRE workbook's pairs for a 30-day SLO: 2% of the budget in 1 h pages, 5% in 6 h opens a ticket.
FAST = BurnWindow("Fast", "page", 0.02, HOUR, 5 * MINUTE, 2 * MINUTE)
SLOW = BurnWindow("Slow", "ticket", 0.05, 6 * HOUR, 30 * MINUTE, 15 * MINUTE)
BURN_WINDOWS = (FAST, SLOW)

ERRORS = "reconciler:deletion_lag_slo_errors:ratio_rate"
BUDGET_LEFT = "reconciler:deletion_lag_slo_budget:remaining_ratio"


def duration(seconds: float) -> str:
    """A PromQL duration in the largest whole unit (``3600`` is ``1h``, ``90`` is ``90s``)."""
    whole = max(round(seconds), 1)
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def nominal(seconds: int) -> str:
    """The unscaled window's name in a recording rule, so dashboards read the same series at any scale."""
    return duration(seconds)


def rule_groups(
    slo: Slo | None = None, *, job: str = JOB, scale: float = 1.0, runbook: str = RUNBOOK
) -> list[Rule]:
    """The recording and alerting rule groups, as the ``groups`` list of a Prometheus rules file."""
    slo = slo or Slo()
    alerts = [_burn_alert(slo, job, w, scale) for w in BURN_WINDOWS]
    worker = _worker_alerts(job, scale)
    for rule in (*alerts, *worker):
        rule["annotations"]["runbook_url"] = f"{runbook}#{rule['annotations']['runbook_url']}"
    return [
        {"name": "reconciler-slo-recording", "rules": _recording(slo, job, scale)},
        {"name": "reconciler-slo-alerts", "rules": alerts},
        {"name": "reconciler-worker-alerts", "rules": worker},
    ]


def _windows(slo: Slo) -> list[int]:
    seconds = {w.long for w in BURN_WINDOWS} | {w.short for w in BURN_WINDOWS} | {slo.period_days * DAY}
    return sorted(seconds)


def _recording(slo: Slo, job: str, scale: float) -> list[Rule]:
    selector = f'job="{job}"'
    rules: list[Rule] = []
    for seconds in _windows(slo):
        window = duration(seconds * scale)
        bucket = f'reconciler_deletion_lag_seconds_bucket{{{selector},le="{slo.le}"}}'
        good = f"sum by (job) (rate({bucket}[{window}]))"
        done = f"sum by (job) (rate(reconciler_deletion_lag_seconds_count{{{selector}}}[{window}]))"
        # Deletions given up (dead-lettered) never reach the histogram: they count as late. `or` keeps the
        # sum defined for a worker that exports no such series.
        given_up = f"sum by (job) (rate(reconciler_deletions_unfinished_total{{{selector}}}[{window}]))"
        total = f"({done} + ({given_up} or {done} * 0))"
        rules.append({"record": f"{ERRORS}{nominal(seconds)}", "expr": f"1 - ({good} / {total})"})
    period = nominal(slo.period_days * DAY)
    rules.append(
        {
            "record": f"{BUDGET_LEFT}{period}",
            "expr": f"1 - ({ERRORS}{period} / {slo.error_budget})",
        }
    )
    return rules


def _burn_alert(slo: Slo, job: str, window: BurnWindow, scale: float) -> Rule:
    rate = slo.burn_rate(window)
    threshold = round(rate * slo.error_budget, 10)
    long, short = nominal(window.long), nominal(window.short)
    return _alert(
        f"ReconcilerDeletionLagBudgetBurn{window.name}",
        f'{ERRORS}{long}{{job="{job}"}} > {threshold}\nand\n{ERRORS}{short}{{job="{job}"}} > {threshold}',
        hold=window.hold * scale,
        severity=window.severity,
        summary=f"Deletion-lag error budget burning {rate}x too fast ({long} and {short} windows)",
        description=(
            f"More than {threshold:.2%} of deleted items took longer than {duration(slo.threshold_seconds)}"
            f" from expiry to the last artifact gone, over both the last {long} and {short}. At this rate"
            f" {window.budget_share:.0%} of the {slo.period_days}-day error budget is spent in {long}."
            " Error ratio over the long window: {{ $value | humanizePercentage }}."
        ),
        anchor="reconcilerdeletionlagbudgetburn",
    )


def _worker_alerts(job: str, scale: float) -> list[Rule]:
    on = f'job="{job}"'
    return [
        *_availability_alerts(job, on, scale),
        *_shard_alerts(on, scale),
        *_lease_alerts(on, scale),
        *_deletion_alerts(on, scale),
    ]


def _availability_alerts(job: str, on: str, scale: float) -> list[Rule]:
    return [
        _alert(
            "ReconcilerTargetDown",
            # Every replica, not one: with leases the others take a silent replica's shards.
            f"max by (job) (up{{{on}}}) == 0",
            hold=DOWN_SECONDS * scale,
            severity="page",
            summary="Prometheus cannot scrape any reconciler replica",
            description=f"Every target of job {job} has failed every scrape for {_words(DOWN_SECONDS)}: the"
            " replicas are down, stuck, or their /metrics port is unreachable. Nothing may be deleted, and"
            " no other alert on the worker's own metrics can fire.",
        ),
        _alert(
            "ReconcilerReplicaDown",
            # Silent while every replica is down: ReconcilerTargetDown pages for that.
            f"up{{{on}}} == 0\nunless on (job)\nmax by (job) (up{{{on}}}) == 0",
            hold=REPLICA_DOWN_SECONDS * scale,
            severity="ticket",
            summary="Prometheus cannot scrape reconciler replica {{ $labels.instance }}",
            description="{{ $labels.instance }} has failed every scrape for"
            f" {_words(REPLICA_DOWN_SECONDS)} while other replicas answer. If it stopped renewing its leases"
            " they expired after RECONCILER_LEASE_SECONDS and the others took its shards"
            " (ReconcilerShardsUncovered pages if they could not): deletions go on, with less capacity and no"
            " spare.",
        ),
        _alert(
            "ReconcilerTargetMissing",
            f"absent(up{{{on}}})",
            hold=MISSING_SECONDS * scale,
            severity="page",
            summary="No reconciler target is known to Prometheus",
            description=f"No target of job {job} has existed for {_words(MISSING_SECONDS)}: the Deployment is"
            " gone or scaled to zero, or service discovery (ServiceMonitor, labels) no longer finds it.",
        ),
        _alert(
            # Per replica: a rollout's new pods are new targets, so a rolling update is no restart.
            "ReconcilerRestarting",
            f"changes(process_start_time_seconds{{{on}}}[{duration(RESTART_WINDOW_SECONDS * scale)}])"
            f" > {RESTARTS}",
            hold=0,
            severity="page",
            summary="Reconciler replica {{ $labels.instance }} keeps restarting",
            description=f"{{{{ $value }}}} restarts in {_words(RESTART_WINDOW_SECONDS)}. A failing liveness"
            " probe (a consumer silent for RECONCILER_LIVENESS_SECONDS) or a crash restarts the process,"
            " which also resets the stall alert's clock: this alert sees the loop instead.",
        ),
    ]


def _shard_alerts(on: str, scale: float) -> list[Rule]:
    return [
        _alert(
            "ReconcilerSourceUnavailable",
            # max: with leases, a replica that cannot find a stream leaves its shards to the others.
            f"max by (job, table) (reconciler_source_up{{{on}}}) == 0",
            hold=SOURCE_DOWN_SECONDS * scale,
            severity="page",
            summary="Source table {{ $labels.table }} is not being read",
            description=f"For {_words(SOURCE_DOWN_SECONDS)} no replica found the stream of"
            " {{ $labels.table }} at discovery: the table is missing, its stream is switched off, or the"
            " worker cannot read it (credentials, IAM). Its deletions are not happening; other sources are"
            " still read.",
        ),
        _alert(
            "ReconcilerShardStalled",
            # min: the shard is stalled when no replica polls it. A replica that lost the lease keeps the
            # series only until its consumer stops (metrics.forget_shard); max would page on that leftover.
            f"min by (job, table, shard) (reconciler_last_successful_poll_age_seconds{{{on}}})"
            f" > {STALL_SECONDS}",
            hold=2 * MINUTE * scale,
            severity="page",
            summary=f"No successful poll of shard {{{{ $labels.shard }}}} of {{{{ $labels.table }}}} for"
            f" {_words(STALL_SECONDS)}",
            description="The consumer of this shard has not completed a GetRecords call for"
            " {{ $value | humanizeDuration }} (counted from its start if it never has), on any replica. A"
            " stalled consumer observes no lag at all, so the SLO alerts stay silent while records wait."
            " A shard no replica holds has no such series: ReconcilerShardsUncovered sees that.",
        ),
        _alert(
            "ReconcilerShardFailing",
            f'sum by (job, stage) (increase(reconciler_failures_total{{{on},stage=~"discover|poll|decode"}}'
            f"[{duration(10 * MINUTE * scale)}])) > 0",
            hold=FAILING_SECONDS * scale,
            severity="page",
            summary="Reading the stream keeps failing at stage {{ $labels.stage }}",
            description=f"For {_words(FAILING_SECONDS)}, finding streams, reading a shard or decoding its"
            " records has failed in every 10-minute window. A shard stuck on a record it cannot place, or"
            " on an iterator or checkpoint it cannot get, polls again and again without progress.",
        ),
        _alert(
            "ReconcilerIteratorAgeHigh",
            f"{_iterator_age(on)} > {ITERATOR_AGE_TICKET_SECONDS}",
            hold=15 * MINUTE * scale,
            severity="ticket",
            summary=f"Shard {{{{ $labels.shard }}}} of {{{{ $labels.table }}}} is reading records over"
            f" {_words(ITERATOR_AGE_TICKET_SECONDS)} old",
            description="The newest record read was {{ $value | humanizeDuration }} old: the worker is"
            " behind the stream, and deletions are late by at least that much.",
        ),
        _alert(
            "ReconcilerStreamRetentionAtRisk",
            f"{_iterator_age(on)} > {ITERATOR_AGE_PAGE_SECONDS}",
            hold=5 * MINUTE * scale,
            severity="page",
            summary=f"Shard {{{{ $labels.shard }}}} of {{{{ $labels.table }}}} is over"
            f" {_words(ITERATOR_AGE_PAGE_SECONDS)} behind",
            description="Stream records are trimmed after 24 hours. Records {{ $value | humanizeDuration }}"
            " old are being read; unread ones will be lost and their artifacts left for the sweeper.",
        ),
    ]


def _lease_alerts(on: str, scale: float) -> list[Rule]:
    window = duration(CHURN_WINDOW_SECONDS * scale)
    moves = f'reconciler_lease_transitions_total{{{on},transition=~"stolen|lost"}}'
    shards = f"sum by (job, table) (reconciler_leases_held{{{on}}})"
    return [
        _alert(
            "ReconcilerShardsUncovered",
            # Every replica reports what it saw at its last lease pass; one that sees a gap is enough.
            f"max by (job, table) (reconciler_shards_unleased{{{on}}}) > 0",
            hold=UNCOVERED_SECONDS * scale,
            severity="page",
            summary="{{ $value }} readable shard(s) of {{ $labels.table }} held by no live replica",
            description=f"For {_words(UNCOVERED_SECONDS)} at least one replica saw open shards of"
            " {{ $labels.table }} (their parents finished) that no live replica holds: nobody reads them,"
            " so their deletions wait and their records age towards the stream's 24-hour trim. A failover"
            " covers a dead replica's shards within minutes; this lasting means the replicas cannot take"
            " them (too few replicas for RECONCILER_MAX_LEASES, lease writes failing) or a parent shard"
            " never finishes.",
        ),
        _alert(
            "ReconcilerLeaseChurn",
            f"sum by (job, table) (increase({moves}[{window}]))\n>\n"
            f"clamp_min({CHURN_PER_SHARD} * {shards}, {CHURN_FLOOR})",
            hold=CHURN_WINDOW_SECONDS * scale,
            severity="ticket",
            summary="Leases of {{ $labels.table }} keep changing hands",
            description=f"Leases of {{{{ $labels.table }}}} were stolen or lost more than {CHURN_PER_SHARD}"
            f" times per leased shard (at least {CHURN_FLOOR}) in every window of"
            f" {_words(CHURN_WINDOW_SECONDS)} for {_words(CHURN_WINDOW_SECONDS)};"
            ' {{ $value | printf "%.0f" }} in the last one. A steal counts twice (`stolen` where taken,'
            " `lost` where it was held). A rolling update or a replica's restart moves each shard at most"
            f" once, under {CHURN_PER_SHARD} per shard and over in minutes, so this is no rollout or"
            " failover: replicas fight over leases or keep missing renewals. Each move rereads from the last"
            " checkpoint and repeats the work in flight.",
        ),
    ]


def _deletion_alerts(on: str, scale: float) -> list[Rule]:
    return [
        _alert(
            "ReconcilerDeletionFailures",
            _failure_ratio(on, duration(10 * MINUTE * scale)) + f" > {FAILURE_RATIO}",
            hold=10 * MINUTE * scale,
            severity="page",
            summary=f"Over {FAILURE_RATIO:.0%} of deletions are failing on {{{{ $labels.table }}}}",
            description="{{ $value | humanizePercentage }} of deletion attempts in the last 10 minutes were"
            " retried or dead-lettered. Retried records hold their shard's checkpoint: nothing behind them"
            " is deleted until they succeed.",
        ),
        _alert(
            "ReconcilerUnsafeTargets",
            f"sum by (job, table, reason) (increase(reconciler_unsafe_targets_total{{{on}}}"
            f"[{duration(15 * MINUTE * scale)}])) > 0",
            hold=0,
            severity="ticket",
            summary="Deletion targets outside their item's scope were refused on {{ $labels.table }}",
            description="The scope check refused {{ $value }} target(s) in 15 minutes ({{ $labels.reason }})."
            " Nothing was deleted for them; each is in the dead-letter table for review.",
        ),
        _alert(
            "ReconcilerDeadLetters",
            f"sum by (job, kind) (increase(reconciler_dead_letters_total{{{on}}}"
            f"[{duration(HOUR * scale)}])) > 0",
            hold=0,
            severity="ticket",
            summary="Dead letters of kind {{ $labels.kind }} were written",
            description="{{ $value }} dead letter(s) of kind {{ $labels.kind }} in the last hour: work the"
            " worker could not finish and recorded for an operator.",
        ),
    ]


def _words(seconds: int) -> str:
    """``600`` as "10 minutes", ``43200`` as "12 hours": alert text that follows the thresholds."""
    for unit, size in (("day", DAY), ("hour", HOUR), ("minute", MINUTE)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


def _iterator_age(on: str) -> str:
    # max, unlike the stall alert: a new owner resumes from the old one's checkpoint, so the higher age is the
    # true lag, and a leftover series (until the old consumer stops) only holds an alert a little longer.
    return f"max by (job, table, shard) (reconciler_iterator_age_seconds{{{on}}})"


def _failure_ratio(on: str, window: str) -> str:
    failed = f'reconciler_record_outcomes_total{{{on},outcome=~"retry|dead_lettered"}}'
    attempted = f'reconciler_record_outcomes_total{{{on},outcome!~"ignored|filtered"}}'
    by = "sum by (job, table)"
    return f"{by} (rate({failed}[{window}]))\n/\n{by} (rate({attempted}[{window}]))"


def _alert(
    name: str,
    expr: str,
    *,
    hold: float,
    severity: str,
    summary: str,
    description: str,
    anchor: str | None = None,
) -> Rule:
    rule: Rule = {"alert": name, "expr": expr}
    if hold:
        rule["for"] = duration(hold)
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": anchor or name.lower(),  # the runbook's heading anchor; rule_groups adds the URL
    }
    return rule
