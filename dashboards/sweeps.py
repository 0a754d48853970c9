"""The sweeps' row: expiry enforcement (items by outcome, read rate, pass progress) and the orphan sweep
(orphans found and deleted by kind, what it had to keep)."""

from __future__ import annotations

import warnings

from dashboards.panels import Panels, rate_by, red_above_zero, selector, series, stat_panel, targets

with warnings.catch_warnings():
    # The SDK warns at import time that the v1 dashboard schema has a v2 successor (see panels.py).
    warnings.filterwarnings("ignore", "Prefer using dashboardv2", DeprecationWarning)
    from grafana_foundation_sdk.models import common


def sweep_panels() -> Panels:
    enforced = series(
        "Expiry sweeper: items by outcome",
        "Expired items the sweeper handled, by source table: enforced (deleted past TTL plus the grace, every"
        " artifact gone), skipped (TTL extended, or already gone), left_to_stream (deleted; its stream REMOVE"
        " finishes the artifacts). Good is few: DynamoDB's TTL usually gets there within the grace.",
        "short",
        targets(
            (rate_by("table, outcome", "reconciler_sweep_items_total", "increase"), "{{table}} {{outcome}}")
        ),
    )
    reads = series(
        "Expiry sweeper: read units and pages per second",
        "What the sweeper's Scans consume, by source table: read units (bounded per replica by"
        " RECONCILER_SWEEP_READ_UNITS_PER_SECOND) and pages. Good is under the capacity the table can spare.",
        "ops",
        targets(
            (rate_by("table", "reconciler_sweep_read_units_total"), "{{table}} read units"),
            (rate_by("table", "reconciler_sweep_pages_total"), "{{table}} pages"),
        ),
    )
    last = selector("reconciler_sweep_last_pass_timestamp_seconds")
    progress = stat_panel(
        "Since a sweep pass last finished",
        "Time since a replica last finished a pass over one of each table's segments (the latest over"
        " replicas). Good is under the sweep interval plus a pass's duration (README: Expiry enforcement).",
        "s",
        targets((f"time() - max by (table) ({last} > 0)", "{{table}}")),
    )
    orphans = series(
        "Orphans found and deleted by kind",
        "What the orphan sweep found with every owner item gone and old enough, and deleted: objects (every"
        " version) by owner table, linked items (with their files) by their own table. Good is zero after"
        " the first sweep: each one is a deletion the stream missed.",
        "short",
        targets(
            (
                rate_by("kind, table", "reconciler_orphans_found_total", "increase"),
                "found {{kind}} {{table}}",
            ),
            (
                rate_by("kind, table", "reconciler_orphans_deleted_total", "increase"),
                "deleted {{kind}} {{table}}",
            ),
        ),
    )
    kept = series(
        "Orphan sweep: kept for a person to look at",
        "Objects and items whose owner could not be named (unresolvable, by reason) and linked items without"
        " a readable created attribute (unaged): never deleted by the sweep. Good is zero.",
        "short",
        targets(
            (
                rate_by("table, reason", "reconciler_orphans_unresolvable_total", "increase"),
                "unresolvable {{table}} {{reason}}",
            ),
            (rate_by("table", "reconciler_orphans_unaged_total", "increase"), "unaged {{table}}"),
        ),
    )
    bars = common.GraphDrawStyle.BARS
    return [
        enforced.draw_style(bars),
        reads,
        orphans.draw_style(bars),
        red_above_zero(kept.draw_style(bars)),
        progress,
    ]
