"""``reconciler sweep --once``: one expiry-enforcement pass over every segment, outside the worker.

Segments another replica is sweeping are left to it. ``--dry-run`` only lists what would be enforced (a
Scan, no lease, no delete); ``--expired`` drops the grace (every item whose TTL has passed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json

from prometheus_client import CollectorRegistry

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
