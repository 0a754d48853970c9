"""Carry out a ``DeletionPlan``: S3 versions and delete markers, then linked items with their own artifacts.

Order matters for idempotence: a linked item is deleted only after everything it points to is gone, so a
failure half-way leaves the pointer in place and the redelivered record finds the rest again.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from reconciler.core.dynamodb_json import Image
from reconciler.core.outcomes import Tally
from reconciler.core.plan import DeletionPlan, LinkQuery, Unsafe, key_hash, resolve
from reconciler.core.scope import S3Location
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.observability.metrics import Metrics
from reconciler.ports import ArtifactStore, ItemStore, ObjectVersion
from reconciler.rules import Rules

log = structlog.get_logger("reconciler.execution")


@dataclass(frozen=True, slots=True)
class ScopedUnsafe:
    """An ``Unsafe`` entry with the item it belongs to (a linked item's, or the record's own)."""

    table: str
    key: dict[str, object]
    unsafe: Unsafe


@dataclass(slots=True)
class ExecutionResult:
    tally: Tally = field(default_factory=Tally)
    unsafe: list[ScopedUnsafe] = field(default_factory=list)
    errors: list[ReconcilerError] = field(default_factory=list)

    @property
    def retriable(self) -> bool:
        return any(e.retriable for e in self.errors)


class Executor:
    def __init__(self, rules: Rules, artifacts: ArtifactStore, items: ItemStore, metrics: Metrics) -> None:
        self._rules = rules
        self._artifacts = artifacts
        self._items = items
        self._metrics = metrics

    async def execute(self, plan: DeletionPlan) -> ExecutionResult:
        """Delete every safe target of ``plan``; collect (never raise) what failed."""
        result = ExecutionResult()
        result.unsafe.extend(ScopedUnsafe(plan.table, dict(plan.key), u) for u in plan.unsafe)
        for location, exact in [
            *((o, True) for o in plan.objects),
            *((p, False) for p in plan.prefixes),
        ]:
            try:
                await self._purge(location, plan.scopes, result, exact=exact)
            except ReconcilerError as exc:
                result.errors.append(exc)
        for query in plan.links:
            await self._delete_linked(query, result)
        return result

    async def _purge(
        self, location: S3Location, scopes: Sequence[S3Location], result: ExecutionResult, *, exact: bool
    ) -> None:
        """Delete every version and delete marker under ``location`` (or of its exact key).

        After each deleted page the listing starts again from the beginning: the next page's markers would
        name a version that no longer exists, and S3 does not promise to resume after one. The loop ends after
        a page that was the listing's last, or when a listing finds nothing left but refused versions. A
        version S3 reported deleted but lists again was not deleted (a key that reached S3 changed, say): an
        error, never a count. (The adapter already counts only answers naming the exact key and version asked
        for; relisting is the second check, made whenever the listing is read again.)
        """
        reported: set[ObjectVersion] = set()
        absent: set[ObjectVersion] = set()
        refused: dict[ObjectVersion, str] = {}
        more = True
        while more:
            todo, more = await self._next_page(location, scopes, set(refused), exact=exact)
            if not todo:
                break
            if still := [v for v in todo if v in reported | absent]:
                self._count_gone(reported - set(still), result)
                raise PermanentError(
                    f"S3 reported {len(still)} versions under {location} deleted that are still listed"
                )
            report = await self._artifacts.delete_versions(location.bucket, todo)
            reported.update(report.deleted)
            absent.update(report.absent)
            refused.update(report.refused)
        self._count_gone(reported, result)
        if absent:
            self._metrics.artifacts.labels("object_version", "absent").inc(len(absent))
        if not reported and not refused:
            result.tally += Tally(absent=1)
            self._metrics.artifacts.labels("object", "absent").inc()
        if refused:
            self._metrics.artifacts.labels("object_version", "refused").inc(len(refused))
            codes = sorted(set(refused.values()))
            raise PermanentError(f"S3 refused {len(refused)} versions under {location}: {', '.join(codes)}")

    async def _next_page(
        self, location: S3Location, scopes: Sequence[S3Location], skip: set[ObjectVersion], *, exact: bool
    ) -> tuple[list[ObjectVersion], bool]:
        """The first page of versions still to delete, listing from the start, and whether more follow."""
        async with contextlib.aclosing(self._artifacts.list_versions(location, exact=exact)) as pages:
            async for page in pages:
                todo = [v for v in page.versions if v not in skip]
                # Defence in depth: a listing never widens the plan's scope. Keys are literal in S3, so a
                # key such as "a/b//c" under the item's prefix is the item's own and is deleted with it.
                for version in todo:
                    if not any(S3Location(location.bucket, version.key).is_within(s) for s in scopes):
                        raise PermanentError(f"listing under {location} returned a key outside scope")
                if todo:
                    return todo, page.more
        return [], False

    async def _delete_linked(self, query: LinkQuery, result: ExecutionResult) -> None:
        rules = self._rules.tables[query.table]
        try:
            async for image in self._items.find(query, rules.key):
                await self._delete_one_linked(query, image, result)
        except ReconcilerError as exc:
            result.errors.append(exc)

    async def _delete_one_linked(self, query: LinkQuery, image: Image, result: ExecutionResult) -> None:
        """Artifacts first, then the item, only while it still links to the deleted one."""
        rules = self._rules.tables[query.table]
        plan = resolve(query.table, rules, image)
        if not self._merge(result, await self.execute(plan)) or not plan.is_safe:
            # Keep the linked item: it is the pointer to what is left or refused.
            log.warning(
                "deletion.linked_item_kept", table=query.table, key_hash=key_hash(query.table, plan.key)
            )
            return
        old = await self._items.delete_linked(query, plan.key)
        if old is None:
            return  # gone already, or no longer linked to this item: not ours to delete
        result.tally += Tally(items=1)
        self._metrics.artifacts.labels("item", "deleted").inc()
        if old != image:
            # It changed between our read and the delete: what it pointed at by then must go as well.
            log.warning(
                "deletion.linked_item_changed", table=query.table, key_hash=key_hash(query.table, plan.key)
            )
            self._merge(result, await self._follow_change(plan, resolve(query.table, rules, old)))

    async def _follow_change(self, planned: DeletionPlan, changed: DeletionPlan) -> ExecutionResult:
        """Delete what only the changed image points at. The item is gone by now, so a redelivered record
        could not find these targets again: a failure here is final (dead-lettered with the targets)."""
        extra = dataclasses.replace(
            changed,
            objects=tuple(o for o in changed.objects if o not in planned.objects),
            prefixes=tuple(p for p in changed.prefixes if p not in planned.prefixes),
            links=tuple(q for q in changed.links if q not in planned.links),
            unsafe=tuple(u for u in changed.unsafe if u not in planned.unsafe),
        )
        follow = await self.execute(extra)
        if follow.errors:
            left = ", ".join(str(t) for t in (*extra.objects, *extra.prefixes)) or "linked items"
            follow.errors = [PermanentError(f"a linked item changed while being deleted; left: {left}")]
        return follow

    @staticmethod
    def _merge(result: ExecutionResult, nested: ExecutionResult) -> bool:
        """Fold ``nested`` into ``result``; True if it finished without errors."""
        result.tally += nested.tally
        result.unsafe.extend(nested.unsafe)
        result.errors.extend(nested.errors)
        return not nested.errors

    def _count_gone(self, versions: set[ObjectVersion], result: ExecutionResult) -> None:
        markers = sum(v.is_delete_marker for v in versions)
        result.tally += Tally(object_versions=len(versions) - markers, delete_markers=markers)
        self._metrics.artifacts.labels("object_version", "deleted").inc(len(versions) - markers)
        self._metrics.artifacts.labels("delete_marker", "deleted").inc(markers)
