"""Alerts on the worker itself: its targets, shards, leases and deletions (the SLO's are in ``slo.py``).

Every aggregation keeps the scope's labels (``job`` and, if asked, ``namespace`` or ``cluster``), so each
alert fires once per deployment. Adding an alert is one more ``alert(...)`` entry here, one runbook section
and one promtool test case.
"""

from __future__ import annotations

from reconciler.observability.promql import DAY, HOUR, MINUTE, Rule, Scope, alert, duration, words

# Alert thresholds; the dashboard draws the shard ones as lines too.
STALL_SECONDS = 10 * MINUTE  # no successful poll for this long: ReconcilerShardStalled
DOWN_SECONDS = 5 * MINUTE  # ReconcilerTargetDown: every replica
REPLICA_DOWN_SECONDS = 15 * MINUTE  # ReconcilerReplicaDown: one replica, while others answer
MISSING_SECONDS = 10 * MINUTE  # ReconcilerTargetMissing
# With labels kept per deployment, ReconcilerTargetMissing also names a deployment that had targets this
# recently and has none now (absent() cannot name one: it sees only the whole job gone).
MISSING_LOOKBACK_SECONDS = DAY
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
# ReconcilerVerificationFailed: a receipt's re-check found targets again, in a window this long. A ticket:
# the receipt says so itself, and the leftover was written after the deletion by someone a person must find.
VERIFICATION_WINDOW_SECONDS = 15 * MINUTE


def worker_alerts(scope: Scope, scale: float) -> list[Rule]:
    return [
        *_availability_alerts(scope, scale),
        *_shard_alerts(scope, scale),
        *_lease_alerts(scope, scale),
        *_deletion_alerts(scope, scale),
    ]


def _availability_alerts(scope: Scope, scale: float) -> list[Rule]:
    up = scope.select("up")
    return [
        alert(
            "ReconcilerTargetDown",
            # Every replica, not one: with leases the others take a silent replica's shards.
            f"max {scope.by()} ({up}) == 0",
            hold=DOWN_SECONDS * scale,
            severity="page",
            summary="Prometheus cannot scrape any reconciler replica",
            description=f"Every target of job {scope.job} has failed every scrape for {words(DOWN_SECONDS)}:"
            " the replicas are down, stuck, or their /metrics port is unreachable. Nothing may be deleted,"
            " and no other alert on the worker's own metrics can fire.",
        ),
        alert(
            "ReconcilerReplicaDown",
            # Silent while every replica is down: ReconcilerTargetDown pages for that.
            f"{up} == 0\nunless on ({scope.labels()})\nmax {scope.by()} ({up}) == 0",
            hold=REPLICA_DOWN_SECONDS * scale,
            severity="ticket",
            summary="Prometheus cannot scrape reconciler replica {{ $labels.instance }}",
            description="{{ $labels.instance }} has failed every scrape for"
            f" {words(REPLICA_DOWN_SECONDS)} while other replicas answer. If it stopped renewing its leases"
            " they expired after RECONCILER_LEASE_SECONDS and the others took its shards"
            " (ReconcilerShardsUncovered pages if they could not): deletions go on, with less capacity and no"
            " spare.",
        ),
        _missing(scope, scale),
        alert(
            # Per replica: a rollout's new pods are new targets, so a rolling update is no restart.
            "ReconcilerRestarting",
            f"changes({scope.select('process_start_time_seconds')}"
            f"[{duration(RESTART_WINDOW_SECONDS * scale)}]) > {RESTARTS}",
            hold=0,
            severity="page",
            summary="Reconciler replica {{ $labels.instance }} keeps restarting",
            description=f"{{{{ $value }}}} restarts in {words(RESTART_WINDOW_SECONDS)}. A failing liveness"
            " probe (a consumer silent for RECONCILER_LIVENESS_SECONDS) or a crash restarts the process,"
            " which also resets the stall alert's clock: this alert sees the loop instead.",
        ),
    ]


def _missing(scope: Scope, scale: float) -> Rule:
    up = scope.select("up")
    expr = f"absent({up})"
    gone = ""
    if scope.keep:
        lookback = duration(MISSING_LOOKBACK_SECONDS * scale)
        seen = f"group {scope.by()} (max_over_time({up}[{lookback}]))"
        expr += f"\nor\n({seen}\nunless\ngroup {scope.by()} ({up}))"
        gone = (
            f" Per deployment ({', '.join(scope.keep)}): one that had targets in the last"
            f" {words(MISSING_LOOKBACK_SECONDS)} and has none now."
        )
    return alert(
        "ReconcilerTargetMissing",
        expr,
        hold=MISSING_SECONDS * scale,
        severity="page",
        summary="No reconciler target is known to Prometheus",
        description=f"No target of job {scope.job} has existed for {words(MISSING_SECONDS)}: the Deployment"
        " is gone or scaled to zero, or service discovery (ServiceMonitor, labels) no longer finds it."
        + gone,
    )


def _shard_alerts(scope: Scope, scale: float) -> list[Rule]:
    reading = scope.select("reconciler_failures_total", 'stage=~"discover|poll|decode"')
    return [
        alert(
            "ReconcilerSourceUnavailable",
            # max: with leases, a replica that cannot find a stream leaves its shards to the others.
            f"max {scope.by('table')} ({scope.select('reconciler_source_up')}) == 0",
            hold=SOURCE_DOWN_SECONDS * scale,
            severity="page",
            summary="Source table {{ $labels.table }} is not being read",
            description=f"For {words(SOURCE_DOWN_SECONDS)} no replica found the stream of"
            " {{ $labels.table }} at discovery: the table is missing, its stream is switched off, or the"
            " worker cannot read it (credentials, IAM). Its deletions are not happening; other sources are"
            " still read.",
        ),
        alert(
            "ReconcilerShardStalled",
            # min: the shard is stalled when no replica polls it. A replica that lost the lease keeps the
            # series only until its consumer stops (metrics.forget_shard); max would page on that leftover.
            f"min {scope.by('table', 'shard')}"
            f" ({scope.select('reconciler_last_successful_poll_age_seconds')}) > {STALL_SECONDS}",
            hold=2 * MINUTE * scale,
            severity="page",
            summary=f"No successful poll of shard {{{{ $labels.shard }}}} of {{{{ $labels.table }}}} for"
            f" {words(STALL_SECONDS)}",
            description="The consumer of this shard has not completed a GetRecords call for"
            " {{ $value | humanizeDuration }} (counted from its start if it never has), on any replica. A"
            " stalled consumer observes no lag at all, so the SLO alerts stay silent while records wait."
            " A shard no replica holds has no such series: ReconcilerShardsUncovered sees that.",
        ),
        alert(
            "ReconcilerShardFailing",
            f"sum {scope.by('stage')} (increase({reading}[{duration(10 * MINUTE * scale)}])) > 0",
            hold=FAILING_SECONDS * scale,
            severity="page",
            summary="Reading the stream keeps failing at stage {{ $labels.stage }}",
            description=f"For {words(FAILING_SECONDS)}, finding streams, reading a shard or decoding its"
            " records has failed in every 10-minute window. A shard stuck on a record it cannot place, or"
            " on an iterator or checkpoint it cannot get, polls again and again without progress.",
        ),
        alert(
            "ReconcilerIteratorAgeHigh",
            f"{_iterator_age(scope)} > {ITERATOR_AGE_TICKET_SECONDS}",
            hold=15 * MINUTE * scale,
            severity="ticket",
            summary=f"Shard {{{{ $labels.shard }}}} of {{{{ $labels.table }}}} is reading records over"
            f" {words(ITERATOR_AGE_TICKET_SECONDS)} old",
            description="The newest record read was {{ $value | humanizeDuration }} old: the worker is"
            " behind the stream, and deletions are late by at least that much.",
        ),
        alert(
            "ReconcilerStreamRetentionAtRisk",
            f"{_iterator_age(scope)} > {ITERATOR_AGE_PAGE_SECONDS}",
            hold=5 * MINUTE * scale,
            severity="page",
            summary=f"Shard {{{{ $labels.shard }}}} of {{{{ $labels.table }}}} is over"
            f" {words(ITERATOR_AGE_PAGE_SECONDS)} behind",
            description="Stream records are trimmed after 24 hours. Records {{ $value | humanizeDuration }}"
            " old are being read; unread ones will be lost and their artifacts left for the sweeper.",
        ),
    ]


def _lease_alerts(scope: Scope, scale: float) -> list[Rule]:
    window = duration(CHURN_WINDOW_SECONDS * scale)
    moves = scope.select("reconciler_lease_transitions_total", 'transition=~"stolen|lost"')
    shards = f"sum {scope.by('table')} ({scope.select('reconciler_leases_held')})"
    return [
        alert(
            "ReconcilerShardsUncovered",
            # Every replica reports what it saw at its last lease pass; one that sees a gap is enough.
            f"max {scope.by('table')} ({scope.select('reconciler_shards_unleased')}) > 0",
            hold=UNCOVERED_SECONDS * scale,
            severity="page",
            summary="{{ $value }} readable shard(s) of {{ $labels.table }} held by no live replica",
            description=f"For {words(UNCOVERED_SECONDS)} at least one replica saw open shards of"
            " {{ $labels.table }} (their parents finished) that no live replica holds: nobody reads them,"
            " so their deletions wait and their records age towards the stream's 24-hour trim. A failover"
            " covers a dead replica's shards within minutes; this lasting means the replicas cannot take"
            " them (too few replicas for RECONCILER_MAX_LEASES, lease writes failing) or a parent shard"
            " never finishes.",
        ),
        alert(
            "ReconcilerLeaseChurn",
            f"sum {scope.by('table')} (increase({moves}[{window}]))\n>\n"
            f"clamp_min({CHURN_PER_SHARD} * {shards}, {CHURN_FLOOR})",
            hold=CHURN_WINDOW_SECONDS * scale,
            severity="ticket",
            summary="Leases of {{ $labels.table }} keep changing hands",
            description=f"Leases of {{{{ $labels.table }}}} were stolen or lost more than {CHURN_PER_SHARD}"
            f" times per leased shard (at least {CHURN_FLOOR}) in every window of"
            f" {words(CHURN_WINDOW_SECONDS)} for {words(CHURN_WINDOW_SECONDS)};"
            ' {{ $value | printf "%.0f" }} in the last one. A steal counts twice (`stolen` where taken,'
            " `lost` where it was held). A rolling update or a replica's restart moves each shard at most"
            f" once, under {CHURN_PER_SHARD} per shard and over in minutes, so this is no rollout or"
            " failover: replicas fight over leases or keep missing renewals. Each move rereads from the last"
            " checkpoint and repeats the work in flight.",
        ),
    ]


def _deletion_alerts(scope: Scope, scale: float) -> list[Rule]:
    return [
        alert(
            "ReconcilerDeletionFailures",
            _failure_ratio(scope, duration(10 * MINUTE * scale)) + f" > {FAILURE_RATIO}",
            hold=10 * MINUTE * scale,
            severity="page",
            summary=f"Over {FAILURE_RATIO:.0%} of deletions are failing on {{{{ $labels.table }}}}",
            description="{{ $value | humanizePercentage }} of deletion attempts in the last 10 minutes were"
            " retried or dead-lettered. Retried records hold their shard's checkpoint: nothing behind them"
            " is deleted until they succeed.",
        ),
        alert(
            "ReconcilerUnsafeTargets",
            f"sum {scope.by('table', 'reason')} (increase({scope.select('reconciler_unsafe_targets_total')}"
            f"[{duration(15 * MINUTE * scale)}])) > 0",
            hold=0,
            severity="ticket",
            summary="Deletion targets outside their item's scope were refused on {{ $labels.table }}",
            description="The scope check refused {{ $value }} target(s) in 15 minutes ({{ $labels.reason }})."
            " Nothing was deleted for them; each is in the dead-letter table for review.",
        ),
        alert(
            "ReconcilerDeadLetters",
            f"sum {scope.by('kind')} (increase({scope.select('reconciler_dead_letters_total')}"
            f"[{duration(HOUR * scale)}])) > 0",
            hold=0,
            severity="ticket",
            summary="Dead letters of kind {{ $labels.kind }} were written",
            description="{{ $value }} dead letter(s) of kind {{ $labels.kind }} in the last hour: work the"
            " worker could not finish and recorded for an operator.",
        ),
        alert(
            "ReconcilerVerificationFailed",
            f"sum {scope.by('table')} (increase({scope.select('reconciler_verification_failures_total')}"
            f"[{duration(VERIFICATION_WINDOW_SECONDS * scale)}])) > 0",
            hold=5 * MINUTE * scale,
            severity="ticket",
            summary="Deleted items of {{ $labels.table }} have targets that are there again",
            description='{{ $value | printf "%.0f" }} receipt(s) in the last'
            f" {words(VERIFICATION_WINDOW_SECONDS)} whose re-check right after the deletion found some of its"
            " S3 objects or linked items again: something wrote them after the deletion's last listing. The"
            " receipts say `leftover`; the data stays until a person finds the writer and deletes it.",
        ),
    ]


def _iterator_age(scope: Scope) -> str:
    # max, unlike the stall alert: a new owner resumes from the old one's checkpoint, so the higher age is the
    # true lag, and a leftover series (until the old consumer stops) only holds an alert a little longer.
    return f"max {scope.by('table', 'shard')} ({scope.select('reconciler_iterator_age_seconds')})"


def _failure_ratio(scope: Scope, window: str) -> str:
    failed = scope.select("reconciler_record_outcomes_total", 'outcome=~"retry|dead_lettered"')
    attempted = scope.select("reconciler_record_outcomes_total", 'outcome!~"ignored|filtered"')
    by = f"sum {scope.by('table')}"
    return f"{by} (rate({failed}[{window}]))\n/\n{by} (rate({attempted}[{window}]))"
