"""Carry out a ``DeletionPlan``: S3 versions and delete markers, then linked items with their own artifacts.

Order matters for idempotence: a linked item is deleted only after everything it points to is gone, so a
failure half-way leaves the pointer in place and the redelivered record finds the rest again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from reconciler.core.outcomes import Tally
from reconciler.core.plan import DeletionPlan, LinkQuery, Unsafe, key_hash, resolve
from reconciler.core.scope import S3Location, ScopeViolation, check_in_scope
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
                result.tally += await self._purge(location, plan.scopes, exact=exact)
            except ReconcilerError as exc:
                result.errors.append(exc)
        for query in plan.links:
            await self._delete_linked(query, result)
        return result

    async def _purge(self, location: S3Location, scopes: Sequence[S3Location], *, exact: bool) -> Tally:
        """Delete every version and delete marker under ``location`` (or of its exact key)."""
        tally = Tally()
        refused: dict[ObjectVersion, str] = {}
        found = False
        async for page in self._artifacts.list_versions(location, exact=exact):
            for version in page:  # defence in depth: a listing never widens the plan's scope
                try:
                    check_in_scope(S3Location(location.bucket, version.key), scopes)
                except ScopeViolation as exc:
                    raise PermanentError(f"listing returned a key outside scope: {exc}") from exc
            found = found or bool(page)
            report = await self._artifacts.delete_versions(location.bucket, page)
            markers = sum(v.is_delete_marker for v in report.deleted)
            tally += Tally(object_versions=len(report.deleted) - markers, delete_markers=markers)
            refused.update(report.refused)
        if not found:
            tally += Tally(absent=1)
        self._count(tally, refused=len(refused))
        if refused:
            codes = sorted(set(refused.values()))
            raise PermanentError(f"S3 refused {len(refused)} versions under {location}: {', '.join(codes)}")
        return tally

    async def _delete_linked(self, query: LinkQuery, result: ExecutionResult) -> None:
        rules = self._rules.tables[query.table]
        try:
            async for image in self._items.find(query, rules.key):
                plan = resolve(query.table, rules, image)
                nested = await self.execute(plan)
                result.tally += nested.tally
                result.unsafe.extend(nested.unsafe)
                result.errors.extend(nested.errors)
                if nested.errors or not plan.is_safe:
                    # Keep the linked item: it is the pointer to what is left or refused.
                    log.warning(
                        "deletion.linked_item_kept",
                        table=query.table,
                        key_hash=key_hash(query.table, plan.key),
                    )
                    continue
                await self._items.delete(query.table, [plan.key])
                result.tally += Tally(items=1)
                self._metrics.artifacts.labels("item", "deleted").inc()
        except ReconcilerError as exc:
            result.errors.append(exc)

    def _count(self, tally: Tally, *, refused: int) -> None:
        artifacts = self._metrics.artifacts
        artifacts.labels("object_version", "deleted").inc(tally.object_versions)
        artifacts.labels("delete_marker", "deleted").inc(tally.delete_markers)
        artifacts.labels("object", "absent").inc(tally.absent)
        if refused:
            artifacts.labels("object_version", "refused").inc(refused)
