"""Every metric the worker exports, defined in one place on an injected registry.

Labels stay low-cardinality: table, cause, kind, outcome, reason, error type and shard (shards are few per
stream and their series are removed when a shard is done). Never keys or ids of items.
"""

from __future__ import annotations

import contextlib
import platform
import time
import typing
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from reconciler import __version__
from reconciler.core.classify import Cause
from reconciler.core.parents import ParentReason
from reconciler.core.plan import UnsafeReason
from reconciler.core.reverse import UnresolvableReason
from reconciler.core.spec import RuleSet
from reconciler.ports import LetterKind, Verification

# Lag buckets from 1 second to 7 days. prometheus-client renders bounds as le="3600.0"; rules must match.
LAG_BUCKETS = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
    28800.0, 43200.0, 86400.0, 172800.0, 345600.0, 604800.0,
)  # fmt: skip


ORPHAN_KINDS = ("object", "item")
"""The ``kind`` label of the orphan sweep's counters: an S3 object, or a linked DynamoDB item."""

# Why an age rule kept an object past its age (or refused an account value): reconciler_age_kept_total.
AGE_KEPT_REASONS = ("unsafe", "out_of_scope", "other_account", "refused", "invalid_account")

# Every (kind, outcome) pair of reconciler_artifacts_total, created at start so rates exist before traffic.
ARTIFACT_OUTCOMES = (
    ("object_version", "deleted"),
    ("object_version", "refused"),
    ("object_version", "absent"),
    ("delete_marker", "deleted"),
    ("item", "deleted"),
    ("object", "absent"),
)
SWEEP_OUTCOMES = ("enforced", "skipped", "left_to_stream")
# What a dry run counts as a real run's deletions: the kinds of reconciler_shadow_targets_total.
SHADOW_TARGET_KINDS = ("object_version", "delete_marker", "item")
LEASE_TRANSITIONS = ("taken", "expired", "stolen", "released", "lost")
REDRIVE_OUTCOMES = ("resolved", "refused", "failed", "skipped", "not_redrivable")
SCHEDULED_OUTCOMES = ("succeeded", "failed", "stopped", "lease_lost")
RECORD_OUTCOMES = ("deleted", "ignored", "filtered", "dead_lettered", "retry")
RECORD_EVENTS = (
    ("INSERT", "none"),
    ("MODIFY", "none"),
    *(("REMOVE", cause.value) for cause in Cause),
    ("undecodable", "none"),
)


class Metrics:
    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.build_info = Gauge(
            "reconciler_build_info",
            "Always 1; the labels name the running version and Python.",
            ["version", "python"],
            registry=registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.records = Counter(
            "reconciler_stream_records_total",
            "Stream records read, by source table, event name and deletion cause ('none' if not a deletion).",
            ["table", "event", "cause"],
            registry=registry,
        )
        self.outcomes = Counter(
            "reconciler_record_outcomes_total",
            "Final or retried outcomes of stream records: deleted, ignored, filtered, dead_lettered, retry.",
            ["table", "outcome"],
            registry=registry,
        )
        self.artifacts = Counter(
            "reconciler_artifacts_total",
            "Linked artifacts handled, by kind (object_version, delete_marker, item) and outcome"
            " (deleted, absent, refused).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.unsafe = Counter(
            "reconciler_unsafe_targets_total",
            "Targets refused by the scope check and never executed, by table and reason.",
            ["table", "reason"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "reconciler_dead_letters_total",
            "Dead letters written, by kind (undecodable, no_image, unsafe, failed).",
            ["kind"],
            registry=registry,
        )
        self.dead_letters_pending = Gauge(
            "reconciler_dead_letters_pending",
            "Pending dead letters by kind, as last counted from the dead-letter table's index.",
            ["kind"],
            registry=registry,
        )
        self.dead_letters_redriven = Counter(
            "reconciler_dead_letters_redriven_total",
            "Dead letters redriven in this process, by kind and outcome (resolved, refused, failed, ...).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "reconciler_failures_total",
            "Failed attempts to finish a record or poll a shard, by stage and error type.",
            ["stage", "error"],
            registry=registry,
        )
        self.unfinished = Counter(
            "reconciler_deletions_unfinished_total",
            "Deletions dead-lettered before every artifact was gone; the SLO counts them as late.",
            ["cause"],
            registry=registry,
        )
        self.deletion_lag = Histogram(
            "reconciler_deletion_lag_seconds",
            "Seconds from TTL expiry (or the request, for customer deletions) until every artifact was gone.",
            ["cause"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.ttl_service_lag = Histogram(
            "reconciler_ttl_service_lag_seconds",
            "Seconds from TTL expiry until the REMOVE event (how late DynamoDB's TTL service deleted it).",
            ["cause"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.pipeline_lag = Histogram(
            "reconciler_pipeline_lag_seconds",
            "Seconds from the REMOVE event until every artifact was gone (this worker's own lag).",
            ["cause"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.enforcement_lag = Histogram(
            "reconciler_enforcement_lag_seconds",
            "Seconds from an expired item's enforcement deadline (TTL expiry plus the enforcement grace)"
            " until the sweeper deleted it (this worker's own lag, like the pipeline's).",
            ["table"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.sweep_candidates = Counter(
            "reconciler_sweep_candidates_total",
            "Items the expiry sweeper found past their TTL plus the grace, by source table.",
            ["table"],
            registry=registry,
        )
        self.sweep_items = Counter(
            "reconciler_sweep_items_total",
            "Candidates the sweeper handled, by outcome: enforced (deleted, every artifact gone), skipped"
            " (TTL extended or item gone before the conditional delete), left_to_stream (deleted, artifacts"
            " left to the stream's REMOVE).",
            ["table", "outcome"],
            registry=registry,
        )
        self.sweep_pages = Counter(
            "reconciler_sweep_pages_total",
            "Scan pages the sweeper read, by source table.",
            ["table"],
            registry=registry,
        )
        self.sweep_read_units = Counter(
            "reconciler_sweep_read_units_total",
            "Read capacity units the sweeper's Scans consumed, by source table.",
            ["table"],
            registry=registry,
        )
        self.sweep_passes = Counter(
            "reconciler_sweep_passes_total",
            "Segment passes the sweeper finished (each segment of a table once per pass), by source table.",
            ["table"],
            registry=registry,
        )
        self.sweep_last_pass = Gauge(
            "reconciler_sweep_last_pass_timestamp_seconds",
            "Unix time this worker last finished a sweep pass of one of a source table's segments.",
            ["table"],
            registry=registry,
        )
        self._shadow(registry)
        self.iterator_age = Gauge(
            "reconciler_iterator_age_seconds",
            "Age of the newest record read from a shard when it was read.",
            ["table", "shard"],
            registry=registry,
        )
        self.last_poll = Gauge(
            "reconciler_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful GetRecords call on a shard.",
            ["table", "shard"],
            registry=registry,
        )
        registry.register(_PollAge(self.last_poll, clock))
        self.source_up = Gauge(
            "reconciler_source_up",
            "1 while a source table's stream was found at the last discovery; 0 while it is missing,"
            " unreadable or not discovered yet.",
            ["table"],
            registry=registry,
        )
        self.shards = Gauge(
            "reconciler_shards_consuming",
            "Shards this worker is consuming now.",
            ["table"],
            registry=registry,
        )

        self.leases_held = Gauge(
            "reconciler_leases_held",
            "Shard leases this worker holds now.",
            ["table"],
            registry=registry,
        )
        self.lease_transitions = Counter(
            "reconciler_lease_transitions_total",
            "Lease changes made or seen by this worker: taken (free), expired (taken after its owner stopped"
            " renewing), stolen (taken from a live owner to balance), released (given up on shutdown), lost"
            " (found taken by another worker).",
            ["table", "transition"],
            registry=registry,
        )
        self.shards_ended = Counter(
            "reconciler_shards_ended_total",
            "Closed shards this worker read to their end and checkpointed as ended.",
            ["table"],
            registry=registry,
        )
        self.shards_unleased = Gauge(
            "reconciler_shards_unleased",
            "Readable shards (parents finished) that no live worker holds, as this worker saw them last.",
            ["table"],
            registry=registry,
        )
        self.lease_owners = Gauge(
            "reconciler_lease_owners",
            "Live workers holding leases on a source table's stream, as this worker saw them last.",
            ["table"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "reconciler_records_in_flight",
            "Stream records read and not yet finished, by source table.",
            ["table"],
            registry=registry,
        )
        self.receipts = Counter(
            "reconciler_receipts_total",
            "Deletion receipts written, by source table and the re-check of their targets right after the"
            " deletion (verified, leftover, not_checked).",
            ["table", "verification"],
            registry=registry,
        )
        self.verification_failures = Counter(
            "reconciler_verification_failures_total",
            "Deletions whose targets were found again when re-checked right after the deletion.",
            ["table"],
            registry=registry,
        )
        self._orphan_metrics(registry)
        self._scheduled_metrics(registry)
        self._age_metrics(registry)

    def _scheduled_metrics(self, registry: CollectorRegistry) -> None:
        self.scheduled_runs = Counter(
            "reconciler_scheduled_runs_total",
            "Runs of a scheduled job (the orphan sweep) by this replica, by job and outcome.",
            ["job", "outcome"],
            registry=registry,
        )
        self.scheduled_last_run = Gauge(
            "reconciler_scheduled_last_run_timestamp_seconds",
            "When this replica last finished a successful run of the job (0 until it has).",
            ["job"],
            registry=registry,
        )

    def initialize_job(self, job: str) -> None:
        """A scheduled job's series at zero (the worker's scheduler creates them for its jobs)."""
        self.scheduled_last_run.labels(job)
        for outcome in SCHEDULED_OUTCOMES:
            self.scheduled_runs.labels(job, outcome)

    def _age_metrics(self, registry: CollectorRegistry) -> None:
        """The age sweep (``reconciler.age``): objects deleted by an age rule, whatever item they were of."""
        self.age_deletions = Counter(
            "reconciler_age_deletions_total",
            "Objects an age rule deleted (every version and delete marker), by rule.",
            ["rule"],
            registry=registry,
        )
        self.age_versions_deleted = Counter(
            "reconciler_age_versions_deleted_total",
            "Object versions and delete markers an age rule deleted, by rule.",
            ["rule"],
            registry=registry,
        )
        self.age_kept = Counter(
            "reconciler_age_kept_total",
            "Objects past an age rule's age that were kept, by rule and reason (unsafe, out_of_scope,"
            " other_account, refused), and account values that render no prefix (invalid_account).",
            ["rule", "reason"],
            registry=registry,
        )
        self.age_pages = Counter(
            "reconciler_age_pages_total",
            "ListObjectVersions pages the age sweep read, by rule.",
            ["rule"],
            registry=registry,
        )

    def _orphan_metrics(self, registry: CollectorRegistry) -> None:
        self.orphans_found = Counter(
            "reconciler_orphans_found_total",
            "Objects and linked items the orphan sweep found old enough and with every owner (parent) item"
            " missing, by kind (object, item) and table (an object's owner table, an item's own).",
            ["kind", "table"],
            registry=registry,
        )
        self.orphans_deleted = Counter(
            "reconciler_orphans_deleted_total",
            "Orphans the orphan sweep deleted (an object's every version; an item with its artifacts), by"
            " kind (object, item) and table.",
            ["kind", "table"],
            registry=registry,
        )
        self.orphans_unaged = Counter(
            "reconciler_orphans_unaged_total",
            "Linked items whose parents are all gone, kept because they have no readable created attribute.",
            ["table"],
            registry=registry,
        )
        self.orphans_unresolvable = Counter(
            "reconciler_orphans_unresolvable_total",
            "Objects the orphan sweep kept because no single owner item could be named, by table and reason.",
            ["table", "reason"],
            registry=registry,
        )
        self.orphan_pages = Counter(
            "reconciler_orphan_pages_total",
            "ListObjectVersions pages the orphan sweep read.",
            registry=registry,
        )

    def initialize(self, rules: RuleSet) -> None:
        """Create the known label sets at zero, so rates and increases see the first event.

        A counter series that appears with value 1 has no earlier sample: ``increase()`` misses it, and an
        alert on it would never fire for a first occurrence.
        """
        for table in rules.sources:
            self._initialize_source(table)
            for outcome in RECORD_OUTCOMES:
                self.outcomes.labels(table, outcome)
            for event, cause in RECORD_EVENTS:
                self.records.labels(table, event, cause)
        for cause in Cause:
            self.unfinished.labels(cause.value)
            self.deletion_lag.labels(cause.value)
            self.pipeline_lag.labels(cause.value)
            if cause is not Cause.REQUESTED:  # a customer request has no TTL to be late for
                self.ttl_service_lag.labels(cause.value)
        for table in rules.tables:
            for reason in UnsafeReason:
                self.unsafe.labels(table, reason.value)
        self._initialize_letters()
        for kind, outcome in ARTIFACT_OUTCOMES:
            self.artifacts.labels(kind, outcome)
        self._initialize_orphans(rules)
        self._initialize_age(rules)

    def _initialize_age(self, rules: RuleSet) -> None:
        for rule in rules.age_rules:
            self.age_deletions.labels(rule.name)
            self.age_versions_deleted.labels(rule.name)
            self.age_pages.labels(rule.name)
            for reason in AGE_KEPT_REASONS:
                self.age_kept.labels(rule.name, reason)

    def _initialize_orphans(self, rules: RuleSet) -> None:
        reasons = dict.fromkeys([*(r.value for r in UnresolvableReason), *(r.value for r in ParentReason)])
        for table in rules.tables:
            for kind in ORPHAN_KINDS:
                self.orphans_found.labels(kind, table)
                self.orphans_deleted.labels(kind, table)
            self.orphans_unaged.labels(table)
            for reason in reasons:
                self.orphans_unresolvable.labels(table, reason)

    def _initialize_letters(self) -> None:
        for kind in typing.get_args(LetterKind):
            self.dead_letters.labels(kind)
            self.dead_letters_pending.labels(kind)
            for outcome in REDRIVE_OUTCOMES:
                self.dead_letters_redriven.labels(kind, outcome)

    def initialize_shadow(self, rules: RuleSet) -> None:
        """Shadow mode's label sets at zero; a worker that deletes exports none of them."""
        for table in rules.sources:
            for cause in Cause:
                self.shadow_records.labels(table, cause.value)
                for kind in SHADOW_TARGET_KINDS:
                    self.shadow_targets.labels(table, cause.value, kind)
            for letter in typing.get_args(LetterKind):
                self.shadow_dead_letters.labels(table, letter)
        for table in rules.tables:
            for reason in UnsafeReason:
                self.shadow_refusals.labels(table, reason.value)

    def _shadow(self, registry: CollectorRegistry) -> None:
        """What a dry run (``reconciler run --dry-run``) would have done; it moves none of the deletion,
        refusal, dead-letter or lag metrics above."""
        self.shadow_records = Counter(
            "reconciler_shadow_records_total",
            "Dry run: records whose deletion a real run would carry out, by source table and cause.",
            ["table", "cause"],
            registry=registry,
        )
        self.shadow_targets = Counter(
            "reconciler_shadow_targets_total",
            "Dry run: object versions, delete markers and linked items a real run would delete, by source"
            " table, cause and kind.",
            ["table", "cause", "kind"],
            registry=registry,
        )
        self.shadow_refusals = Counter(
            "reconciler_shadow_refusals_total",
            "Dry run: targets the scope check would refuse, by the table of their item and reason.",
            ["table", "reason"],
            registry=registry,
        )
        self.shadow_dead_letters = Counter(
            "reconciler_shadow_dead_letters_total",
            "Dry run: dead letters a real run would write (none is written), by source table and kind.",
            ["table", "kind"],
            registry=registry,
        )

    def _initialize_source(self, table: str) -> None:
        self.shards.labels(table)
        self.enforcement_lag.labels(table)
        self.source_up.labels(table).set(0)
        self.leases_held.labels(table)
        self.shards_ended.labels(table)
        self.shards_unleased.labels(table)
        self.lease_owners.labels(table)
        self.in_flight.labels(table)
        for verification in typing.get_args(Verification):
            self.receipts.labels(table, verification)
        self.verification_failures.labels(table)
        for transition in LEASE_TRANSITIONS:
            self.lease_transitions.labels(table, transition)
        for counter in (self.sweep_candidates, self.sweep_pages, self.sweep_read_units, self.sweep_passes):
            counter.labels(table)
        for outcome in SWEEP_OUTCOMES:
            self.sweep_items.labels(table, outcome)
        self.sweep_last_pass.labels(table)

    def observe_enforced(self, table: str, lag_seconds: float) -> None:
        """Count one expired item of ``table`` the sweeper deleted ``lag_seconds`` after its deadline.

        For the enforcement sweeper: call it once per item it deleted itself, with the time from TTL expiry
        plus the enforcement grace to its successful delete (clamped at zero: an early delete is on time).
        The deletion-lag SLO counts each call as one event of the worker's own lag, beside the pipeline's.
        The item's artifacts then go through the stream like any other REMOVE (``reconciler_pipeline_lag``).
        """
        self.enforcement_lag.labels(table).observe(max(lag_seconds, 0.0))

    def forget_shard(self, table: str, shard: str) -> None:
        """Drop a finished shard's series so closed shards do not pile up."""
        for gauge in (self.iterator_age, self.last_poll):
            with contextlib.suppress(KeyError):
                gauge.remove(table, shard)


class _PollAge(Collector):
    """``reconciler_last_successful_poll_age_seconds``: computed at scrape time, so it grows while stalled.

    A consumer stuck inside a call emits nothing else; this series is what a stall alert can see.
    """

    def __init__(self, last_poll: Gauge, clock: Callable[[], float]) -> None:
        self._last_poll = last_poll
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "reconciler_last_successful_poll_age_seconds",
            "Seconds since the last successful GetRecords call on a shard, as of the scrape.",
            labels=["table", "shard"],
        )
        now = self._clock()
        for metric in self._last_poll.collect():
            for sample in metric.samples:
                family.add_metric(
                    [sample.labels["table"], sample.labels["shard"]], max(now - sample.value, 0.0)
                )
        yield family
