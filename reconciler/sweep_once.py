"""``reconciler sweep --once``: one expiry-enforcement pass over every segment, outside the worker.

Segments another replica is sweeping are left to it. ``--dry-run`` only lists what would be enforced (a
Scan, no lease, no delete); ``--expired`` drops the grace (every item whose TTL has passed). ``--orphans``
runs the orphan sweep instead (``reconciler.orphans``): objects whose every owner item is gone; ``--age``
the age rules (``reconciler.age``): objects past their rule's age, for the accounts it lists.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json

from prometheus_client import CollectorRegistry

from reconciler.age import AgeReport
from reconciler.core.plan import key_hash
from reconciler.orphans import OrphanReport
from reconciler.rules import Rules
from reconciler.settings import Settings
from reconciler.sweeper import Pass, SweepReport


async def sweep_once(settings: Settings, rules: Rules, *, dry_run: bool, expired: bool) -> SweepReport:
    from reconciler.app import build_sweeper  # noqa: PLC0415 - keeps the CLI's other commands light

    async with build_sweeper(settings, rules, CollectorRegistry()) as sweeper:
        how = Pass(force=True, dry_run=dry_run, grace=0.0 if expired else None)
        return await sweeper.sweep(asyncio.Event(), how)


def to_text(report: SweepReport, *, dry_run: bool) -> str:
    """Keys and expiries of what would be enforced (dry run), then the counts; never item content."""
    lines = [
        f"would enforce: {table} {json.dumps(dict(key), default=str, sort_keys=True)} expired"
        f" {dt.datetime.fromtimestamp(ttl, tz=dt.UTC).isoformat()}"
        for table, key, ttl in report.due
    ]
    if dry_run:
        lines.append(f"candidates: {report.candidates} (dry run: nothing deleted)")
    else:
        lines.append(
            f"candidates: {report.candidates}, enforced: {report.enforced}, skipped: {report.skipped},"
            f" left to the stream: {report.left_to_stream}, segments swept: {report.segments}"
        )
    lines.append(f"pages: {report.pages}, read units: {report.read_units:g}")
    return "\n".join(lines)


async def sweep_orphans(settings: Settings, rules: Rules, *, dry_run: bool) -> OrphanReport:
    from reconciler.app import build_orphan_sweep  # noqa: PLC0415 - keeps the CLI's other commands light

    async with build_orphan_sweep(settings, rules, CollectorRegistry()) as sweep:
        return await sweep.sweep(dry_run=dry_run)


def orphans_text(report: OrphanReport, *, dry_run: bool) -> str:
    """One line per orphan (bucket, key, owner table and key hash; an item's table and key hash, and its
    parents'), then the counts; never item content."""
    verb = "would delete" if dry_run else "orphan"
    lines = [
        f"{verb}: s3://{orphan.bucket}/{orphan.key} ({len(orphan.versions)} versions)"
        f" owner {owner.table} {key_hash(owner.table, owner.item_key)}"
        for orphan in report.orphans
        for owner in orphan.owners
    ]
    items = report.items
    lines += [
        f"{verb}: item {orphan.table} {key_hash(orphan.table, orphan.key)}"
        f" parent {parent.table} {key_hash(parent.table, parent.item_key)}"
        for orphan in items.orphans
        for parent in orphan.parents
    ]
    done = (
        "dry run: nothing deleted"
        if dry_run
        else f"deleted: {report.deleted} ({report.versions_deleted} versions)"
    )
    lines.append(
        f"orphans: {len(report.orphans)} ({done}), objects listed: {report.objects}, pages: {report.pages},"
        f" kept as unresolvable: {report.unresolvable}, younger than the minimum age: {report.young},"
        f" otherwise kept: {report.kept}"
    )
    done = (
        "dry run: nothing deleted"
        if dry_run
        else f"deleted: {items.deleted} ({items.versions_deleted} versions)"
    )
    lines.append(
        f"orphan items: {len(items.orphans)} ({done}), items scanned: {items.items}, pages: {items.pages},"
        f" read units: {items.read_units:g}, kept as unresolvable: {items.unresolvable},"
        f" younger than the minimum age: {items.young}, without a created attribute: {items.unaged},"
        f" otherwise kept: {items.kept}"
    )
    return "\n".join(lines)


async def sweep_age(settings: Settings, rules: Rules, *, dry_run: bool) -> AgeReport:
    from reconciler.app import build_age_sweep  # noqa: PLC0415 - keeps the CLI's other commands light

    async with build_age_sweep(settings, rules, CollectorRegistry()) as sweep:
        return await sweep.sweep(dry_run=dry_run)


def age_text(report: AgeReport, *, dry_run: bool) -> str:
    """One line per object past its age (rule, bucket, key, versions, age), then the counts."""
    verb = "would delete" if dry_run else "expired"
    lines = [
        f"{verb}: s3://{aged.bucket}/{aged.key} ({len(aged.versions)} versions) age {aged.age}"
        f" rule {aged.rule}"
        for aged in report.expired
    ]
    done = (
        "dry run: nothing deleted"
        if dry_run
        else f"deleted: {report.deleted} ({report.versions_deleted} versions)"
    )
    lines.append(
        f"past their age: {len(report.expired)} ({done}), objects listed: {report.objects},"
        f" prefixes: {report.prefixes}, pages: {report.pages}, younger: {report.young},"
        f" kept: {report.kept}, invalid accounts: {report.invalid_accounts}"
    )
    return "\n".join(lines)
