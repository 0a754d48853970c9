"""The orphan sweep: delete the S3 objects whose every owner item is gone, when no stream record said so
(and, first, the linked DynamoDB items whose every parent is gone: ``reconciler.orphan_items``).

A missed event (a worker down longer than the stream's 24-hour retention, a trimmed window, a rules file
fixed later) leaves an item's files behind for good. The sweep lists every walk root
(``core.reverse.walk_roots``) with ``ListObjectVersions``, maps each key back to its owners
(``core.reverse.OwnerIndex``), reads the owners in ``BatchGetItem`` batches, and deletes every version of an
object only if all of these hold:

- the key has owners, none of them ``Unresolvable`` (an object no template names, or one under a template
  that cannot name a single item, is kept; the latter is counted and logged);
- its newest version (or delete marker) is older than ``orphan_min_age_seconds``, so an upload that races
  its item's creation is never touched;
- every owner's item is missing (strongly consistent reads), and the object lies under every owner's
  rendered scope (checked again here before the delete).

Owners in a table the worker does not read (not a source, not linked from one) cannot be checked with the
worker's grants: their objects are kept. Deletes are by version id, so a version written after the listing
stays. Logs carry bucket, key, owner table and key hash only, never item content.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from reconciler.core.plan import key_hash
from reconciler.core.reverse import KeyTypes, Owner, OwnerIndex, Unresolvable, reachable_tables, walk_roots
from reconciler.core.scope import S3Location, ScopeViolation, check_in_scope
from reconciler.core.spec import RuleSet
from reconciler.observability.metrics import Metrics
from reconciler.orphan_items import ItemOrphanReport, ItemOrphanSweep
from reconciler.ports import ArtifactStore, ItemStore, LinkedItemScan, ObjectVersion
from reconciler.schedule import Job
from reconciler.settings import Settings
from reconciler.sweeper import ReadBudget

log = structlog.get_logger("reconciler.orphans")

Clock = Callable[[], dt.datetime]
MAX_DELETE_VERSIONS = 1000  # DeleteObjects takes at most 1,000 keys
OBJECTS_PER_BATCH = 100  # objects whose owners are read together (BatchGetItem takes 100 keys a request)


@dataclass(frozen=True, slots=True)
class Orphan:
    """An object to delete: its versions, and the items (all missing) whose scopes hold it."""

    bucket: str
    key: str
    versions: tuple[ObjectVersion, ...]
    owners: tuple[Owner, ...]


@dataclass(slots=True)
class OrphanReport:
    """What one sweep saw and did. ``orphans`` lists what was (or, in a dry run, would be) deleted."""

    pages: int = 0
    objects: int = 0
    orphans: list[Orphan] = field(default_factory=list)
    deleted: int = 0
    versions_deleted: int = 0
    unresolvable: int = 0
    young: int = 0
    kept: int = 0
    """Objects kept for another reason: an owner still there, refused by S3, or an owner the worker cannot
    read."""
    items: ItemOrphanReport = field(default_factory=ItemOrphanReport)
    """The linked DynamoDB items swept (``reconciler.orphan_items``)."""
    stopped: bool = False
    """The sweep was stopped (between batches) before it had listed every walk root."""


@dataclass(frozen=True, slots=True)
class _Listed:
    bucket: str
    key: str
    versions: tuple[ObjectVersion, ...]


class OrphanSweep:
    def __init__(  # noqa: PLR0917 - the sweep's collaborators and its two knobs
        self,
        rules: RuleSet,
        key_types: KeyTypes,
        artifacts: ArtifactStore,
        items: ItemStore,
        metrics: Metrics,
        clock: Clock,
        min_age: dt.timedelta,
        *,
        linked: LinkedItemScan | None = None,
        read_budget: ReadBudget | None = None,
    ) -> None:
        """Without ``linked`` only objects are swept; linked items are Scanned through it, paced by
        ``read_budget`` (100 read units a second if not given)."""
        self._rules = rules
        self._item_sweep = (
            ItemOrphanSweep(
                rules, linked, artifacts, items, metrics, read_budget or ReadBudget(100.0), key_types
            )
            if linked is not None
            else None
        )
        self._index = OwnerIndex.of(rules, key_types)
        self._readable = frozenset(reachable_tables(rules))
        self._artifacts = artifacts
        self._items = items
        self._metrics = metrics
        self._clock = clock
        self._min_age = min_age

    async def sweep(self, *, dry_run: bool, stopping: asyncio.Event | None = None) -> OrphanReport:
        """One pass over every linked table, then every walk root; in a dry run, nothing is deleted. Once
        ``stopping`` is set, the sweep stops after the page or batch in hand (``report.stopped``). Items go
        first: an orphan item's files go with it, through its scope checks, and the walk then finds them
        gone."""
        report = OrphanReport()
        cutoff = self._clock() - self._min_age
        halt = stopping or asyncio.Event()
        if self._item_sweep is not None:
            await self._item_sweep.sweep(cutoff, report.items, dry_run=dry_run, stopping=halt)
        for bucket, prefixes in walk_roots(self._rules).items():
            for prefix in prefixes:
                if halt.is_set():
                    report.stopped = True
                    break
                await self._walk(S3Location(bucket, prefix), cutoff, report, dry_run=dry_run, stopping=halt)
        log.info(
            "orphans.swept",
            dry_run=dry_run,
            stopped=report.stopped,
            pages=report.pages,
            objects=report.objects,
            orphans=len(report.orphans),
            deleted=report.deleted,
            unresolvable=report.unresolvable,
            young=report.young,
            kept=report.kept,
            item_pages=report.items.pages,
            items=report.items.items,
            item_orphans=len(report.items.orphans),
            items_deleted=report.items.deleted,
            items_unresolvable=report.items.unresolvable,
            items_young=report.items.young,
            items_unaged=report.items.unaged,
            items_kept=report.items.kept,
            read_units=report.items.read_units,
        )
        return report

    async def _walk(
        self,
        root: S3Location,
        cutoff: dt.datetime,
        report: OrphanReport,
        *,
        dry_run: bool,
        stopping: asyncio.Event,
    ) -> None:
        """List ``root``; a key's versions may run on to the next page, so the last key waits for it."""
        pending: dict[str, list[ObjectVersion]] = {}
        async with contextlib.aclosing(self._artifacts.list_versions(root, exact=False)) as pages:
            async for page in pages:
                report.pages += 1
                self._metrics.orphan_pages.inc()
                for version in page.versions:
                    pending.setdefault(version.key, []).append(version)
                last = page.versions[-1].key if page.versions and page.more else None
                done = [_Listed(root.bucket, k, tuple(v)) for k, v in pending.items() if k != last]
                pending = {last: pending[last]} if last is not None else {}
                for start in range(0, len(done), OBJECTS_PER_BATCH):
                    if stopping.is_set():
                        report.stopped = True
                        return  # the next sweep lists from the top again: nothing half-done is left
                    batch = done[start : start + OBJECTS_PER_BATCH]
                    await self._batch(batch, cutoff, report, dry_run=dry_run)
        rest = [_Listed(root.bucket, k, tuple(v)) for k, v in pending.items()]
        await self._batch(rest, cutoff, report, dry_run=dry_run)

    async def _batch(
        self, listed: Sequence[_Listed], cutoff: dt.datetime, report: OrphanReport, *, dry_run: bool
    ) -> None:
        candidates: list[tuple[_Listed, list[Owner]]] = []
        for obj in listed:
            report.objects += 1
            owners = self._owners(obj, report)
            if owners is None:
                continue
            if not _older_than(obj.versions, cutoff):
                report.young += 1
                continue
            candidates.append((obj, owners))
        present = await self._present([owner for _, owners in candidates for owner in owners])
        orphans = []
        for obj, owners in candidates:
            if any(_ident(owner) in present for owner in owners):
                report.kept += 1
                continue
            orphan = Orphan(obj.bucket, obj.key, obj.versions, tuple(owners))
            orphans.append(orphan)
            self._found(orphan, report, dry_run=dry_run)
        if not dry_run:
            await self._delete(orphans, report)

    def _owners(self, obj: _Listed, report: OrphanReport) -> list[Owner] | None:
        """The object's owners if it may be an orphan, else None (counted as kept or unresolvable)."""
        found = self._index.owners(obj.bucket, obj.key)
        if not found:
            return None  # no item's, as the rules see it
        unresolvable = [o for o in found if isinstance(o, Unresolvable)]
        for item in unresolvable:
            self._metrics.orphans_unresolvable.labels(item.table, item.reason.value).inc()
            log.info(
                "orphans.unresolvable",
                bucket=obj.bucket,
                key=obj.key,
                table=item.table,
                reason=item.reason.value,
            )
        if unresolvable:
            report.unresolvable += 1
            return None
        owners = [o for o in found if isinstance(o, Owner)]
        if any(owner.table not in self._readable for owner in owners):
            report.kept += 1
            log.info("orphans.kept", bucket=obj.bucket, key=obj.key, reason="owner_table_not_read")
            return None
        return owners

    async def _present(self, owners: Sequence[Owner]) -> set[tuple[str, str]]:
        """The owners whose item exists now, as (table, key hash): one ``get_many`` per table."""
        by_table: dict[str, dict[str, Mapping[str, object]]] = {}
        for owner in owners:
            by_table.setdefault(owner.table, {})[key_hash(owner.table, owner.item_key)] = owner.item_key
        present: set[tuple[str, str]] = set()
        for table, keys in by_table.items():
            images = await self._items.get_many(table, list(keys.values()))
            present |= {
                (table, ident) for ident, image in zip(keys, images, strict=True) if image is not None
            }
        return present

    def _found(self, orphan: Orphan, report: OrphanReport, *, dry_run: bool) -> None:
        report.orphans.append(orphan)
        for owner in orphan.owners:
            self._metrics.orphans_found.labels("object", owner.table).inc()
            log.info(
                "orphans.found",
                kind="object",
                dry_run=dry_run,
                bucket=orphan.bucket,
                key=orphan.key,
                table=owner.table,
                key_hash=key_hash(owner.table, owner.item_key),
                versions=len(orphan.versions),
            )

    async def _delete(self, orphans: Sequence[Orphan], report: OrphanReport) -> None:
        """Delete every version of each orphan that still lies under every owner's scope."""
        safe = [orphan for orphan in orphans if _in_scope(orphan)]
        report.kept += len(orphans) - len(safe)
        if not safe:
            return
        bucket = safe[0].bucket  # a batch comes from one listing, so from one bucket
        versions = [v for orphan in safe for v in orphan.versions]
        refused: set[str] = set()
        for start in range(0, len(versions), MAX_DELETE_VERSIONS):
            done = await self._artifacts.delete_versions(
                bucket, versions[start : start + MAX_DELETE_VERSIONS]
            )
            report.versions_deleted += len(done.deleted) + len(done.absent)
            for version, code in done.refused:
                refused.add(version.key)
                log.warning("orphans.refused", bucket=bucket, key=version.key, code=code)
        for orphan in safe:
            if orphan.key in refused:
                report.kept += 1
                continue
            report.deleted += 1
            for owner in orphan.owners:
                self._metrics.orphans_deleted.labels("object", owner.table).inc()
            log.info(
                "orphans.deleted",
                kind="object",
                bucket=orphan.bucket,
                key=orphan.key,
                versions=len(orphan.versions),
            )


def orphan_job(settings: Settings, build: Callable[[], Awaitable[OrphanSweep]]) -> Job:
    """The orphan sweep as the worker's scheduled job ``orphans``: every ``orphan_sweep_seconds``, at once
    after a ``trimmed`` gap and once more a minimum age later (objects younger than that are skipped, so only
    then are the gap's last uploads old enough); a dry run in shadow mode. ``build`` (the key types come from
    ``DescribeTable``) is called once, at the first run, which is after the pre-flight."""
    built: list[OrphanSweep] = []

    async def run(stopping: asyncio.Event) -> None:
        if not built:
            built.append(await build())
        await built[0].sweep(dry_run=settings.dry_run, stopping=stopping)

    return Job(
        "orphans",
        settings.orphan_sweep_seconds,
        run,
        after_gaps=True,
        settle=settings.orphan_min_age_seconds,
    )


def _ident(owner: Owner) -> tuple[str, str]:
    return (owner.table, key_hash(owner.table, owner.item_key))


def _older_than(versions: Sequence[ObjectVersion], cutoff: dt.datetime) -> bool:
    """True if every version (so the newest) was written before ``cutoff``; an unknown time is never old."""
    return all(v.last_modified is not None and v.last_modified < cutoff for v in versions)


def _in_scope(orphan: Orphan) -> bool:
    """The object lies under every owner's rendered scope and has a clean key (the forward check)."""
    target = S3Location(orphan.bucket, orphan.key)
    try:
        for owner in orphan.owners:
            check_in_scope(target, [owner.scope])
    except ScopeViolation as exc:
        log.error("orphans.unsafe", bucket=orphan.bucket, key=orphan.key, reason=str(exc))
        return False
    return True
