"""The orphan sweep's second half: linked DynamoDB items whose every parent item is gone.

A missed REMOVE leaves its item's linked items behind too (and, through them, their files). For each table
linked from a table the worker reads (``core.parents.ParentIndex``), this Scans the keys, link attributes
and created attribute only (``ProjectionExpression``, paced by a read budget), maps each item back to its
possible parents, reads them (``BatchGetItem``, strongly consistent), and deletes an item only if all of
these hold:

- its parents are named exactly (``core.parents``): one that cannot be (a partial key, scopes that need
  more of the parent than its key, a table the worker does not read) keeps it, counted and logged;
- every parent is missing;
- its created attribute says it is older than ``orphan_min_age_seconds``: DynamoDB items carry no write
  time, and an item written just before its parent must never go. An item without a readable one is
  reported (``orphans.unaged``) and kept;
- read again, strongly consistent and whole, it still has the same parents and age.

It is then deleted as its parent's cascade would have deleted it (``Executor.delete_orphan``): its
targets, scope-checked, and its own linked items first, then the item itself with a ``DeleteItem``
conditioned on the link value it was judged on, so an item re-linked meanwhile stays. Logs carry table and
key hash only, never item content.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from reconciler.core.dynamodb_json import Image
from reconciler.core.parents import Parent, ParentIndex, UnknownParent, created_at, orphaned
from reconciler.core.plan import key_hash
from reconciler.core.reverse import KeyTypes
from reconciler.core.spec import RuleSet
from reconciler.execution import ExecutionResult, Executor
from reconciler.observability.metrics import Metrics
from reconciler.ports import ArtifactStore, ItemKey, ItemStore, LinkedItemScan
from reconciler.sweeper import ReadBudget

log = structlog.get_logger("reconciler.orphans")

SCAN_PAGE = 100  # items a Scan page evaluates: one BatchGetItem (100 keys) reads their parents


@dataclass(frozen=True, slots=True)
class ItemOrphan:
    """A linked item to delete, and its parents (all missing)."""

    table: str
    key: Mapping[str, object]
    parents: tuple[Parent, ...]


@dataclass(slots=True)
class ItemOrphanReport:
    """What one pass over the linked tables saw and did; ``orphans`` as in ``OrphanReport``."""

    pages: int = 0
    items: int = 0
    read_units: float = 0.0
    orphans: list[ItemOrphan] = field(default_factory=list)
    deleted: int = 0
    versions_deleted: int = 0
    unresolvable: int = 0
    young: int = 0
    unaged: int = 0
    kept: int = 0
    """Items kept for another reason: a parent still there, changed since the Scan, a refused target, or a
    failed delete (``failed`` counts those too)."""
    failed: int = 0


@dataclass(frozen=True, slots=True)
class _Judged:
    image: Image
    parents: tuple[Parent, ...]


class ItemOrphanSweep:
    def __init__(  # noqa: PLR0917 - the sweep's collaborators
        self,
        rules: RuleSet,
        scan: LinkedItemScan,
        artifacts: ArtifactStore,
        items: ItemStore,
        metrics: Metrics,
        budget: ReadBudget,
        key_types: KeyTypes | None = None,
    ) -> None:
        self._rules = rules
        self._index = ParentIndex.of(rules, key_types)
        self._scan = scan
        self._artifacts = artifacts
        self._items = items
        self._metrics = metrics
        self._budget = budget

    async def sweep(
        self, cutoff: dt.datetime, report: ItemOrphanReport, *, dry_run: bool, stopping: asyncio.Event | None
    ) -> None:
        """Every linked table, page by page; ``stopping`` ends the pass between pages."""
        executor = Executor(self._rules, self._artifacts, self._items, self._metrics, dry_run=dry_run)
        for table, problems in self._index.unswept.items():
            reasons = sorted({p.reason.value for p in problems})
            log.info("orphans.items_unswept", table=table, reasons=reasons)
        for table in self._index.linked:
            start: Image | None = None
            while stopping is None or not stopping.is_set():
                await self._budget.wait()
                page = await self._scan.scan_linked(
                    table, self._index.attributes(table), start=start, limit=SCAN_PAGE
                )
                self._budget.spend(page.read_units)
                report.pages += 1
                report.read_units += page.read_units
                await self._page(table, page.items, cutoff, executor, report, dry_run=dry_run)
                if (start := page.start) is None:
                    break

    async def _page(
        self,
        table: str,
        images: Sequence[Image],
        cutoff: dt.datetime,
        executor: Executor,
        report: ItemOrphanReport,
        *,
        dry_run: bool,
    ) -> None:
        report.items += len(images)
        judged = [j for image in images if (j := self._judge(table, image, report)) is not None]
        present = await self._present([p for j in judged for p in j.parents])
        found = [j for j in judged if self._orphan(table, j, present, cutoff, report)]
        if not found:
            return
        current = await self._items.get_many(table, [_key(self._rules, table, j.image) for j in found])
        for seen, now in zip(found, current, strict=True):
            if now is None or self._judge(table, now, None) != _Judged(now, seen.parents):
                report.kept += 1  # gone, or changed since the Scan: the next sweep judges it again
                continue
            if not _older(self._rules, table, now, cutoff):
                report.young += 1
                continue
            await self._delete(table, now, seen.parents, executor, report, dry_run=dry_run)

    def _judge(self, table: str, image: Image, report: ItemOrphanReport | None) -> _Judged | None:
        """The item's parents if it may be an orphan; None if it has none or one cannot be named (that
        counted and logged when ``report`` is given)."""
        parents = self._index.parents(table, image)
        unknown = [p for p in parents if isinstance(p, UnknownParent)]
        if unknown and report is not None:
            report.unresolvable += 1
            ident = key_hash(table, _key(self._rules, table, image))
            for parent in unknown:
                self._metrics.orphans_unresolvable.labels(table, parent.reason.value).inc()
                log.info(
                    "orphans.item_unresolvable",
                    table=table,
                    key_hash=ident,
                    parent_table=parent.table,
                    reason=parent.reason.value,
                )
        if unknown or not parents:
            return None
        return _Judged(image, tuple(p for p in parents if isinstance(p, Parent)))

    def _orphan(
        self,
        table: str,
        judged: _Judged,
        present: set[tuple[str, str]],
        cutoff: dt.datetime,
        report: ItemOrphanReport,
    ) -> bool:
        if not orphaned(judged.parents, present):
            report.kept += 1
            return False
        spec = self._rules.tables[table]
        if spec.created_attribute is None or created_at(judged.image.get(spec.created_attribute)) is None:
            report.unaged += 1
            self._metrics.orphans_unaged.labels(table).inc()
            ident = key_hash(table, _key(self._rules, table, judged.image))
            log.info("orphans.unaged", table=table, key_hash=ident, created_attribute=spec.created_attribute)
            return False
        if not _older(self._rules, table, judged.image, cutoff):
            report.young += 1
            return False
        return True

    async def _present(self, parents: Sequence[Parent]) -> set[tuple[str, str]]:
        """The parents whose item exists now, as ``Parent.ident``: one ``get_many`` per table."""
        by_table: dict[str, dict[tuple[str, str], Mapping[str, object]]] = {}
        for parent in parents:
            by_table.setdefault(parent.table, {})[parent.ident] = parent.item_key
        present: set[tuple[str, str]] = set()
        for table, keys in by_table.items():
            images = await self._items.get_many(table, list(keys.values()))
            present |= {ident for ident, image in zip(keys, images, strict=True) if image is not None}
        return present

    async def _delete(
        self,
        table: str,
        image: Image,
        parents: tuple[Parent, ...],
        executor: Executor,
        report: ItemOrphanReport,
        *,
        dry_run: bool,
    ) -> None:
        key = _key(self._rules, table, image)
        ident = key_hash(table, key)
        report.orphans.append(ItemOrphan(table, key, parents))
        self._metrics.orphans_found.labels("item", table).inc()
        log.info("orphans.found", kind="item", dry_run=dry_run, table=table, key_hash=ident)
        # Any parent's query will do (each is missing); the delete is conditioned on its link value.
        result = await executor.delete_orphan(parents[0].query, image)
        if dry_run:
            return
        if result.errors:
            report.failed += 1
            report.kept += 1
            errors = sorted({type(e).__name__ for e in result.errors})
            log.warning("orphans.item_failed", table=table, key_hash=ident, errors=errors)
        elif ItemKey(table, key) in result.deleted_items:
            report.deleted += 1
            report.versions_deleted += _versions(result)
            self._metrics.orphans_deleted.labels("item", table).inc()
            log.info("orphans.deleted", kind="item", table=table, key_hash=ident, versions=_versions(result))
        else:
            report.kept += 1  # re-linked meanwhile, or a refused target keeps it as the pointer
            log.info("orphans.kept", kind="item", table=table, key_hash=ident, reason="changed_or_refused")


def _key(rules: RuleSet, table: str, image: Image) -> dict[str, object]:
    return {name: image[name] for name in rules.tables[table].key if name in image}


def _older(rules: RuleSet, table: str, image: Image, cutoff: dt.datetime) -> bool:
    """True if the item's created attribute says it was written before ``cutoff``; never if unreadable."""
    attribute = rules.tables[table].created_attribute
    written = created_at(image.get(attribute)) if attribute is not None else None
    return written is not None and written < cutoff


def _versions(result: ExecutionResult) -> int:
    return result.tally.object_versions + result.tally.delete_markers
