"""The ops overview dashboard, built with grafana-foundation-sdk from the same SLO as the alert rules.

``render()`` is what ``scripts/generate.py`` writes to ``dashboards/reconciler-overview.json``; ``queries()``
lists every PromQL expression in it, for tests that run them on a real Prometheus. Every expression selects
``job=~"$job"`` (and each label kept per deployment, ``namespace=~"$namespace"`` say) and every panel reads
the ``${datasource}`` variable, so one JSON file serves any Grafana. The SLO and lag rows are in ``lag.py``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dashboards.lag import lag_panels, slo_panels
from dashboards.panels import (
    ON,
    Panels,
    datasource,
    rate_by,
    red_above_zero,
    selector,
    series,
    stat_panel,
    target,
    targets,
    thresholds,
    with_lines,
)
from dashboards.sweeps import sweep_panels
from reconciler.observability.promql import Scope, duration
from reconciler.observability.slo import JOB, Slo
from reconciler.observability.worker_alerts import (
    ITERATOR_AGE_PAGE_SECONDS,
    ITERATOR_AGE_TICKET_SECONDS,
    STALL_SECONDS,
)

with warnings.catch_warnings():
    # The SDK warns at import time that the v1 dashboard schema has a v2 successor (see panels.py).
    warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
    from grafana_foundation_sdk.builders import dashboard as dashboard_builders
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as model

UID = "deletion-reconciler-overview"
TITLE = "Deletion reconciler: overview"


def build(slo: Slo | None = None, job: str = JOB, keep: Sequence[str] = ()) -> model.Dashboard:
    """The dashboard as the SDK's model; ``job`` is only the default value of the ``job`` variable.

    ``keep`` names the labels the rules keep per deployment (``namespace``, ``cluster``): each becomes a
    variable, and every selector filters on it beside the job.
    """
    slo = slo or Slo()
    scope = Scope(job, tuple(keep))
    board = (
        dashboard_builders.Dashboard(TITLE)
        .uid(UID)
        .description(
            "Whether expired and requested deletions finish within the SLO, and why not: the worker's own lag"
            " beside DynamoDB's TTL service lag, throughput, failures and refusals, and the state of every"
            " shard and replica."
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
    for label in scope.keep:
        board.with_variable(_kept_variable(label))
    rows = {
        "SLO: the worker's deletion lag": slo_panels(slo),
        "Deletion lag: the worker's own vs DynamoDB's TTL service": lag_panels(slo),
        "Throughput": _throughput_panels(),
        "Failures and refusals": _failure_panels(),
        "Shards and replicas": [*_replica_panels(), *_lease_panels(), *_shard_panels()],
        "Shadow mode (dry run)": _shadow_panels(),
        "Receipts and verification": _receipt_panels(),
        "Scheduled jobs (orphan sweep)": _scheduled_panels(),
        "Sweeps: expiry enforcement and orphans": sweep_panels(),
        "Age rules": _age_panels(),
    }
    for title, panels in rows.items():
        board.with_row(dashboard_builders.Row(title))
        for panel in panels:
            board.with_panel(panel)
    dashboard = board.build()
    matchers = ",".join((ON, *(f'{label}=~"${label}"' for label in scope.keep)))
    for number, item in enumerate(_walk(dashboard.panels or []), start=1):
        item.id_val = number  # stable ids, so links such as ?viewPanel=7 survive regeneration
        for query in getattr(item, "targets", None) or []:
            query.expr = query.expr.replace(ON, matchers)
    return dashboard


def render(slo: Slo | None = None, job: str = JOB, keep: Sequence[str] = ()) -> str:
    """The dashboard JSON, byte for byte the same for the same arguments."""
    return json.dumps(build(slo, job, keep), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


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


def _datasource_variable() -> dashboard_builders.DatasourceVariable:
    return dashboard_builders.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _kept_variable(label: str) -> dashboard_builders.QueryVariable:
    """One deployment's value of a label the rules keep, among those of the chosen job."""
    query = f"label_values(reconciler_build_info{{{ON}}}, {label})"
    return (
        dashboard_builders.QueryVariable(label)
        .label(label.capitalize())
        .datasource(datasource())
        .query(query)
        .definition(query)
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .include_all(False)  # noqa: FBT003 - the SDK's setter takes a plain bool
        .multi(False)  # noqa: FBT003 - likewise
    )


def _job_variable(job: str) -> dashboard_builders.QueryVariable:
    query = "label_values(reconciler_build_info, job)"
    return (
        dashboard_builders.QueryVariable("job")
        .label("Job")
        .datasource(datasource())
        .query(query)
        .definition(query)
        .current(model.VariableOption(selected=True, text=job, value=job))
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .include_all(False)  # noqa: FBT003 - the SDK's setter takes a plain bool
        .multi(False)  # noqa: FBT003 - likewise
    )


def _throughput_panels() -> Panels:
    return [
        series(
            "Stream records per second by cause",
            "Stream records read, by why the item went (TTL expiry, customer request, or none for"
            " inserts and updates): good is a rate that follows the tables' write and expiry traffic.",
            "ops",
            targets((rate_by("cause", "reconciler_stream_records_total"), "{{cause}}")),
        ),
        series(
            "Artifacts deleted per second by kind",
            "Object versions, delete markers and linked items handled, by outcome: good is deletions"
            " tracking removed items, with refused staying at zero.",
            "ops",
            targets((rate_by("kind, outcome", "reconciler_artifacts_total"), "{{kind}} {{outcome}}")),
        ),
        series(
            "Record outcomes per second",
            "What became of each stream record: deleted, ignored, filtered (a removal the cascade rules"
            " exclude), dead-lettered or retried; good is no retries, since they hold a shard's checkpoint.",
            "ops",
            targets((rate_by("outcome", "reconciler_record_outcomes_total"), "{{outcome}}")),
        ),
    ]


def _failure_panels() -> Panels:
    unsafe = rate_by("table, reason", "reconciler_unsafe_targets_total", "increase")
    dead = rate_by("kind", "reconciler_dead_letters_total", "increase")
    failures = series(
        "Failures per second by stage and error",
        "Failed attempts to finish a record or poll a shard, by stage and error type: good is no data"
        " or a flat zero; anything above zero is red.",
        "ops",
        targets((rate_by("stage, error", "reconciler_failures_total"), "{{stage}} {{error}}")),
    )
    refused = series(
        "Unsafe targets refused",
        "Deletion targets outside their item's scope, refused and dead-lettered for review, by table and"
        " reason: good is zero; any bar is a red flag about the data or the rules.",
        "short",
        targets((unsafe, "{{table}} {{reason}}")),
    )
    letters = series(
        "Dead letters written",
        "Records the worker recorded for an operator instead of finishing, by kind: good is zero; each"
        " bar needs a look in the dead-letter table.",
        "short",
        targets((dead, "{{kind}}")),
    )
    # Every replica counts the same table: the largest count is the freshest, not their sum.
    pending = series(
        "Dead letters pending by kind",
        "Dead letters waiting for a redrive or a person, by kind, as the replicas last counted them (every"
        " minute): good is zero. `reconciler dead-letters list` names them; `redrive` finishes failed ones.",
        "short",
        targets((f"max by (kind) ({selector('reconciler_dead_letters_pending')})", "{{kind}}")),
    )
    bars = (refused, letters)
    return [
        red_above_zero(failures),
        *(red_above_zero(p.draw_style(common.GraphDrawStyle.BARS)) for p in bars),
        red_above_zero(pending),
    ]


def _replica_panels() -> Panels:
    shards = stat_panel(
        "Shards consuming",
        "Stream shards this job's replicas consume now: good is every open shard of every source table.",
        "none",
        targets((f"sum({selector('reconciler_shards_consuming')})", "shards")),
    ).thresholds(thresholds("red", (1, "green")))
    replicas = stat_panel(
        "Replicas up",
        "Replicas Prometheus scrapes successfully: good is the Deployment's replica count, red at zero.",
        "none",
        targets((f"sum({selector('up')})", "replicas")),
    ).thresholds(thresholds("red", (1, "green")))
    version = (
        stat_panel(
            "Running version",
            "Versions (and Pythons) running, with how many replicas run each: good is one line, two during"
            " a rollout.",
            "none",
            [
                target(
                    f"count by (version, python) ({selector('reconciler_build_info')})",
                    "{{version}} (Python {{python}})",
                ).instant()
            ],
        )
        .span(12)
        .thresholds(thresholds("blue"))
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .graph_mode(common.BigValueGraphMode.NONE)
    )
    return [shards.height(5), replicas.height(5), version.height(5)]


def _lease_panels() -> Panels:
    held = series(
        "Leases held per replica",
        "Shard leases each replica holds, by table: good is an even share per replica, none at"
        " RECONCILER_MAX_LEASES; during a rollout the new pod takes its share from the others.",
        "none",
        targets(
            (f"sum by (instance, table) ({selector('reconciler_leases_held')})", "{{instance}} {{table}}")
        ),
    )
    transitions = series(
        "Lease transitions per second",
        "Leases taken (free), expired (taken from a replica that stopped renewing), stolen (to balance),"
        " released (on shutdown) and lost, across replicas: good is flat at zero between rollouts;"
        " stolen and lost together all along is the churn alert.",
        "ops",
        targets((rate_by("transition", "reconciler_lease_transitions_total"), "{{transition}}")),
    )
    in_flight = series(
        "Records in flight per replica",
        "Stream records read and not yet finished on each replica: good is well below"
        " RECONCILER_MAX_RECORDS_IN_FLIGHT (256 by default), which bounds memory; flat at it means the"
        " replica is saturated.",
        "short",
        targets((f"sum by (instance) ({selector('reconciler_records_in_flight')})", "{{instance}}")),
    )
    unleased = series(
        "Unleased shards",
        "Readable shards no live replica holds, the largest count any replica saw at its last lease pass:"
        " good is zero; a failover shows a short spike, and five minutes above zero pages.",
        "none",
        targets((f"max by (table) ({selector('reconciler_shards_unleased')})", "{{table}}")),
    ).span(12)
    owners = series(
        "Live lease owners",
        "Replicas holding leases on each table's stream, as the replicas see them (the largest view):"
        " good is the number of running replicas, or the shard count if that is smaller.",
        "none",
        targets((f"max by (table) ({selector('reconciler_lease_owners')})", "{{table}}")),
    ).span(12)
    return [held, transitions, in_flight, red_above_zero(unleased), owners]


def _shard_panels() -> Panels:
    by_shard, poll = "max by (table, shard)", "reconciler_last_successful_poll_age_seconds"
    iterator_age = series(
        "Iterator age per shard",
        "Age of the newest record read from each shard: good is seconds; the dashed lines are the alerts"
        f" ({duration(ITERATOR_AGE_TICKET_SECONDS)} opens a ticket, {duration(ITERATOR_AGE_PAGE_SECONDS)}"
        " pages, as records are trimmed after 24 h).",
        "s",
        targets((f"{by_shard} ({selector('reconciler_iterator_age_seconds')})", "{{table}} {{shard}}")),
    ).span(12)
    poll_age = series(
        "Seconds since last successful poll",
        "Time since a consumer of each shard (on any replica) last completed a GetRecords call: good is a"
        f" few seconds; at the dashed line ({duration(STALL_SECONDS)}) the stall alert pages: a stuck"
        " consumer reports no lag.",
        "s",
        # min across replicas, as the stall alert: a replica that lost the lease keeps the series a while.
        targets((f"min by (table, shard) ({selector(poll)})", "{{table}} {{shard}}")),
    ).span(12)
    return [
        with_lines(iterator_age, (ITERATOR_AGE_TICKET_SECONDS, "orange"), (ITERATOR_AGE_PAGE_SECONDS, "red")),
        with_lines(poll_age, (STALL_SECONDS, "red")),
    ]


def _shadow_panels() -> Panels:
    """What a ``reconciler run --dry-run`` worker would have done: empty for a worker that deletes."""
    would = series(
        "Shadow: records a real run would delete",
        "Dry run only: stream records whose deletion a real run would carry out, by source table and"
        " cause; no data for a worker that deletes. Good is a rate that follows the tables' expiries and"
        " customer deletions, as the real job's deleted outcomes do.",
        "ops",
        targets((rate_by("table, cause", "reconciler_shadow_records_total"), "{{table}} {{cause}}")),
    )
    artifacts = series(
        "Shadow: artifacts a real run would delete per second",
        "Dry run only: object versions, delete markers and linked items a real run would delete, by source"
        " table, cause and kind. Good is what you expect the worker to delete, nothing more: compare it"
        " with the real job's deleted artifacts.",
        "ops",
        targets(
            (rate_by("table, cause, kind", "reconciler_shadow_targets_total"), "{{table}} {{cause}} {{kind}}")
        ),
    )
    refusals = series(
        "Shadow: refusals and dead letters a real run would write",
        "Dry run only: targets the scope check would refuse (by table and reason) and dead letters a real"
        " run would write (by kind); none is written. Good is zero; each bar is in the shadow.would_refuse"
        " and shadow.would_dead_letter log events.",
        "short",
        targets(
            (
                rate_by("table, reason", "reconciler_shadow_refusals_total", "increase"),
                "refused {{table}} {{reason}}",
            ),
            (
                rate_by("table, kind", "reconciler_shadow_dead_letters_total", "increase"),
                "dead letter {{table}} {{kind}}",
            ),
        ),
    )
    return [would, artifacts, red_above_zero(refusals.draw_style(common.GraphDrawStyle.BARS))]


def _receipt_panels() -> Panels:
    """The receipt of each finished deletion and its re-check (``reconciler/receipts.py``)."""
    written = series(
        "Receipts written per second by verification",
        "A receipt per finished deletion, by source table and the re-check of its targets right after:"
        " verified (all absent), leftover (some there again) or not_checked (the re-check could not read)."
        " Good is every receipt verified, at the rate of deleted outcomes.",
        "ops",
        targets((rate_by("table, verification", "reconciler_receipts_total"), "{{table}} {{verification}}")),
    )
    failures = series(
        "Verification failures",
        "Receipts whose re-check found targets again, by source table (ReconcilerVerificationFailed opens"
        " a ticket): good is zero. `reconciler verify` lists what is still there.",
        "short",
        targets(
            (rate_by("table", "reconciler_verification_failures_total", "increase"), "{{table}}"),
        ),
    )
    return [written, red_above_zero(failures.draw_style(common.GraphDrawStyle.BARS))]


def _scheduled_panels() -> Panels:
    """The jobs the worker runs on a schedule, one replica at a time (the orphan sweep, ``orphans``)."""
    runs = series(
        "Scheduled runs by job and outcome",
        "Runs of the worker's scheduled jobs (orphans: the orphan sweep, every orphan_sweep_seconds and"
        " after a trimmed gap), by outcome, summed over replicas (one runs a job at a time). Good is a"
        " succeeded bar per interval; failed is tried at the next due time (schedule.run_failed).",
        "short",
        targets(
            (rate_by("job, outcome", "reconciler_scheduled_runs_total", "increase"), "{{job}} {{outcome}}")
        ),
    )
    last = selector("reconciler_scheduled_last_run_timestamp_seconds")
    since = stat_panel(
        "Since the last successful scheduled run",
        "Time since a replica last finished a successful run of each job (the latest over replicas). Good"
        " is under the job's interval (a day for the orphan sweep by default).",
        "s",
        targets((f"time() - max by (job) ({last} > 0)", "{{job}}")),
    )
    return [runs.draw_style(common.GraphDrawStyle.BARS), since]


def _age_panels() -> Panels:
    """The age rules' sweep: objects deleted by age for the listed accounts, and those kept."""
    deleted = series(
        "Age rules: objects and versions deleted",
        "Objects whose newest version was older than their age rule's max_age, deleted with every version"
        " and delete marker, by rule. Good is a steady pattern that follows the accounts' traffic; no data"
        " until the age sweep runs.",
        "short",
        targets(
            (rate_by("rule", "reconciler_age_deletions_total", "increase"), "objects {{rule}}"),
            (rate_by("rule", "reconciler_age_versions_deleted_total", "increase"), "versions {{rule}}"),
        ),
    )
    kept = series(
        "Age rules: objects kept past their age",
        "Objects past their age that were kept (outside their listed prefix or unsafe, another account's,"
        " refused by S3) and account values that render no prefix, by rule and reason. Good is zero; each"
        " object is in an age.kept or age.refused log event.",
        "short",
        targets((rate_by("rule, reason", "reconciler_age_kept_total", "increase"), "{{rule}} {{reason}}")),
    )
    return [
        deleted.draw_style(common.GraphDrawStyle.BARS),
        red_above_zero(kept.draw_style(common.GraphDrawStyle.BARS)),
    ]
