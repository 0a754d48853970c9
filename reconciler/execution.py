"""Carry out a ``DeletionPlan``: S3 versions and delete markers, then linked items with their own artifacts.

Order matters for idempotence: a linked item is deleted only after everything it points to is gone, so a
failure half-way leaves the pointer in place and the redelivered record finds the rest again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from reconciler.core.dynamodb_json import Image
from reconciler.core.outcomes import Tally
from reconciler.core.plan import DeletionPlan, LinkQuery, Unsafe, UnsafeReason, key_hash, resolve
from reconciler.core.scope import S3Location
from reconciler.core.spec import RuleSet, ScopeMode
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.fanout import CallSlots, Steps, task_group
from reconciler.observability.metrics import Metrics
from reconciler.ports import ArtifactStore, ItemKey, ItemStore, ObjectVersion

log = structlog.get_logger("reconciler.execution")


@dataclass(frozen=True, slots=True)
class ScopedUnsafe:
    """An ``Unsafe`` entry with the item it belongs to (a linked item's, or the record's own)."""

    table: str
    key: dict[str, object]
    unsafe: Unsafe


RecordRefusals = Callable[[Sequence[ScopedUnsafe]], Awaitable[bool]]
"""Writes the refusals so far durably (the record's dead letter) before a linked item holding them goes;
False if the letter cannot name them all."""


@dataclass(frozen=True, slots=True)
class Planned:
    """What a dry run found a real run would delete: an object version or delete marker, or an item."""

    kind: str  # "object_version", "delete_marker" or "item"
    where: str  # s3://bucket/key, or the table
    what: str  # the version id, or the item's key


@dataclass(frozen=True, slots=True)
class Purged:
    """An S3 location a real run emptied (its exact key, or a prefix), and how many versions and delete
    markers it deleted there: what a receipt re-checks."""

    location: S3Location
    exact: bool
    removed: int


@dataclass(slots=True)
class ExecutionResult:
    tally: Tally = field(default_factory=Tally)
    unsafe: list[ScopedUnsafe] = field(default_factory=list)
    errors: list[ReconcilerError] = field(default_factory=list)
    planned: list[Planned] = field(default_factory=list)
    purged: list[Purged] = field(default_factory=list)
    deleted_items: list[ItemKey] = field(default_factory=list)

    @property
    def retriable(self) -> bool:
        return any(e.retriable for e in self.errors)


@dataclass(frozen=True, slots=True)
class _Record:
    """What every nesting level of one record's execution shares: its call slots and its refusal recorder."""

    slots: CallSlots
    record_refusals: RecordRefusals | None


class Executor:
    """Carries out plans; with ``dry_run`` it only reads (listings, queries) and reports what it would
    delete in ``ExecutionResult.planned``, through the same code path a real run takes.

    A plan's independent steps (its S3 locations, and its linked items, each one its own artifacts first
    and then its conditional delete) run concurrently: at most ``fanout`` AWS calls of one record in flight,
    and at most ``fanout`` unfinished steps per plan (``reconciler.fanout`` says why nesting cannot
    deadlock). Each step collects into a result of its own; they are merged in plan order, so the result is
    the one the sequential run gave.
    """

    def __init__(
        self,
        rules: RuleSet,
        artifacts: ArtifactStore,
        items: ItemStore,
        metrics: Metrics,
        *,
        dry_run: bool = False,
        fanout: int = 16,
    ) -> None:
        if fanout < 1:
            raise ValueError("fanout must be at least 1")
        self._rules = rules
        self._artifacts = artifacts
        self._items = items
        self._metrics = metrics
        self._dry_run = dry_run
        self._fanout = fanout

    async def execute(
        self, plan: DeletionPlan, record_refusals: RecordRefusals | None = None
    ) -> ExecutionResult:
        """Delete every safe target of ``plan``; collect (never raise) what failed. ``record_refusals`` may be
        called by several linked items at once."""
        return await self._execute(plan, _Record(CallSlots(self._fanout), record_refusals))

    async def delete_orphan(self, query: LinkQuery, image: Image) -> ExecutionResult:
        """Delete a linked item whose parents are all gone as the parent's cascade would have: its targets
        (scope-checked), its own linked items, then the item only while it still matches ``query``. There is
        no record to write refusals with, so an item with any stays."""
        return await self._delete_one_linked(query, image, _Record(CallSlots(self._fanout), None), ())

    async def _execute(self, plan: DeletionPlan, run: _Record) -> ExecutionResult:
        result = ExecutionResult()
        own = [ScopedUnsafe(plan.table, dict(plan.key), u) for u in plan.unsafe]
        result.unsafe.extend(own)
        locations = [*((o, True) for o in plan.objects), *((p, False) for p in plan.prefixes)]
        async with task_group() as group:
            steps = Steps(group, self._fanout)
            # The link queries only start steps (each holding a step slot); they hold none themselves.
            links = [group.create_task(self._delete_linked(q, steps, run, own)) for q in plan.links]
            located = [
                await steps.start(functools.partial(self._location, location, plan.scopes, run, exact=exact))
                for location, exact in locations
            ]
        for task in [*located, *links]:
            self._merge(result, task.result())
        return result

    async def _location(
        self, location: S3Location, scopes: Sequence[S3Location], run: _Record, *, exact: bool
    ) -> ExecutionResult:
        result = ExecutionResult()
        try:
            if self._dry_run:
                await self._survey(location, scopes, result, run.slots, exact=exact)
            else:
                await self._purge(location, scopes, result, run.slots, exact=exact)
                removed = result.tally.object_versions + result.tally.delete_markers
                result.purged.append(Purged(location, exact, removed))
        except ReconcilerError as exc:
            result.errors.append(exc)
        return result

    async def _survey(
        self,
        location: S3Location,
        scopes: Sequence[S3Location],
        result: ExecutionResult,
        slots: CallSlots,
        *,
        exact: bool,
    ) -> None:
        """A dry run's purge: every version a real run would delete, read through the same scope defence."""
        found = 0
        listing = self._artifacts.list_versions(location, exact=exact)
        async with contextlib.aclosing(slots.each(listing)) as pages:
            async for page in pages:
                self._check_listing(location, scopes, page.versions)
                for v in page.versions:
                    kind = "delete_marker" if v.is_delete_marker else "object_version"
                    result.planned.append(Planned(kind, f"s3://{location.bucket}/{v.key}", v.version_id))
                found += len(page.versions)
        if not found:
            result.tally += Tally(absent=1)

    async def _purge(
        self,
        location: S3Location,
        scopes: Sequence[S3Location],
        result: ExecutionResult,
        slots: CallSlots,
        *,
        exact: bool,
    ) -> None:
        """Delete every version and delete marker under ``location`` (or of its exact key).

        After each deleted page the listing starts again: the next page's markers would name a version that no
        longer exists, and S3 does not promise to resume after one. It starts after the last version S3
        refused (Object Lock), which still exists, so the marker is valid and refused versions are not listed
        again and again (with many refused pages, relisting from the start was quadratic); before any refusal
        it starts at the beginning. The loop ends after a page that was the listing's last, or when a listing
        finds nothing left but refused versions. A version S3 reported deleted but lists again was not deleted
        (a key that reached S3 changed, say): an error, never a count. (The adapter already counts only
        answers naming the exact key and version asked for; relisting is the second check, made whenever the
        listing is read again.)
        """
        reported: set[ObjectVersion] = set()
        absent: set[ObjectVersion] = set()
        refused: dict[ObjectVersion, str] = {}
        still: list[ObjectVersion] = []
        after: ObjectVersion | None = None
        more = True
        try:
            while more:
                todo, more = await self._next_page(
                    location, scopes, set(refused), slots, exact=exact, after=after
                )
                if not todo:
                    break
                if still := [v for v in todo if v in reported | absent]:
                    raise PermanentError(
                        f"S3 reported {len(still)} versions under {location} deleted that are still listed"
                    )
                bucket = location.bucket
                report = await slots.call(functools.partial(self._artifacts.delete_versions, bucket, todo))
                reported.update(report.deleted)
                absent.update(report.absent)
                refused.update(report.refused)
                after = _resume_after(todo, refused, after)
        finally:
            # What went is counted even when a later page fails: a retry will find it absent.
            self._count_gone(reported - set(still), result)
            if absent - set(still):
                self._metrics.artifacts.labels("object_version", "absent").inc(len(absent - set(still)))
        if not reported and not refused:
            result.tally += Tally(absent=1)
            self._metrics.artifacts.labels("object", "absent").inc()
        if refused:
            self._metrics.artifacts.labels("object_version", "refused").inc(len(refused))
            codes = sorted(set(refused.values()))
            raise PermanentError(f"S3 refused {len(refused)} versions under {location}: {', '.join(codes)}")

    async def _next_page(
        self,
        location: S3Location,
        scopes: Sequence[S3Location],
        skip: set[ObjectVersion],
        slots: CallSlots,
        *,
        exact: bool,
        after: ObjectVersion | None,
    ) -> tuple[list[ObjectVersion], bool]:
        """The first page of versions still to delete, listing after ``after``, and whether more follow."""
        listing = self._artifacts.list_versions(location, exact=exact, after=after)
        async with contextlib.aclosing(slots.each(listing)) as pages:
            async for page in pages:
                todo = [v for v in page.versions if v not in skip]
                self._check_listing(location, scopes, todo)
                if todo:
                    return todo, page.more
        return [], False

    @staticmethod
    def _check_listing(
        location: S3Location, scopes: Sequence[S3Location], versions: Sequence[ObjectVersion]
    ) -> None:
        # Defence in depth: a listing never widens the plan's scope. Keys are literal in S3, so a key such as
        # "a/b//c" under the item's prefix is the item's own and is deleted with it.
        for version in versions:
            if not any(S3Location(location.bucket, version.key).is_within(s) for s in scopes):
                raise PermanentError(f"listing under {location} returned a key outside scope")

    async def _delete_linked(
        self, query: LinkQuery, steps: Steps, run: _Record, parent_unsafe: Sequence[ScopedUnsafe]
    ) -> ExecutionResult:
        """Each linked item found, as a step of its own; their results in the order found."""
        result = ExecutionResult()
        table = self._rules.tables[query.table]
        started: list[asyncio.Task[ExecutionResult]] = []
        failure: ReconcilerError | None = None
        try:
            async with contextlib.aclosing(run.slots.each(self._items.find(query, table.key))) as found:
                async for image in found:
                    entity = table.entity_of(image)
                    if query.entity is not None and (entity is None or entity.name != query.entity):
                        continue  # another kind of item under the same key: not linked by this link
                    if any(t.done() and t.result().errors for t in started):
                        break  # as the sequential run did: a failed item stops this link's work
                    delete = functools.partial(self._delete_one_linked, query, image, run, parent_unsafe)
                    started.append(await steps.start(delete))
        except ReconcilerError as exc:
            failure = exc
        for task in started:
            self._merge(result, await task)
        if failure is not None:
            result.errors.append(failure)
        return result

    async def _delete_one_linked(
        self, query: LinkQuery, image: Image, run: _Record, parent_unsafe: Sequence[ScopedUnsafe]
    ) -> ExecutionResult:
        """Artifacts first, then the item, only while it still links to the deleted one. A linked item with
        refused targets goes too, once the refusals are durably recorded: the refused objects stay, but the
        customer data the item holds does not outlive its parent. Unless the refusals say it may not be
        this parent's (see ``_keeps``).

        Not ``TransactWriteItems`` for these deletes: on success it returns no old image, so an item changed
        between our read and the delete could not be followed (``_follow_change``), and it costs twice the
        write capacity; its all-or-nothing is no use here, since each item is deleted only after its own
        artifacts and stands alone."""
        result = ExecutionResult()
        table = self._rules.tables[query.table]
        plan = resolve(table, image, via=query)
        if not self._merge(result, await self._execute(plan, run)) or _keeps(query, plan):
            # Keep the linked item: it is the pointer to what is left, or it may not be ours.
            log.warning(
                "deletion.linked_item_kept", table=query.table, key_hash=key_hash(query.table, plan.key)
            )
            return result
        if self._dry_run:
            result.planned.append(Planned("item", query.table, _key_text(plan.key)))
            return result
        try:
            if plan.unsafe and not await self._recorded(run, [*parent_unsafe, *result.unsafe]):
                # No letter could name every refusal: the item stays the pointer.
                log.warning(
                    "deletion.linked_item_kept", table=query.table, key_hash=key_hash(query.table, plan.key)
                )
                return result
            old = await run.slots.call(functools.partial(self._items.delete_linked, query, plan.key))
        except ReconcilerError as exc:
            result.errors.append(exc)
            return result
        if old is None:
            return result  # gone already, or no longer linked to this item: not ours to delete
        result.tally += Tally(items=1)
        result.deleted_items.append(ItemKey(query.table, dict(plan.key)))
        self._metrics.artifacts.labels("item", "deleted").inc()
        if old != image:
            # It changed between our read and the delete: what it pointed at by then must go as well.
            log.warning(
                "deletion.linked_item_changed", table=query.table, key_hash=key_hash(query.table, plan.key)
            )
            changed = resolve(table, old, via=query)
            self._merge(result, await self._follow_change(plan, changed, run))
        return result

    @staticmethod
    async def _recorded(run: _Record, refusals: Sequence[ScopedUnsafe]) -> bool:
        return run.record_refusals is not None and await run.record_refusals(refusals)

    async def _follow_change(
        self, planned: DeletionPlan, changed: DeletionPlan, run: _Record
    ) -> ExecutionResult:
        """Delete what only the changed image points at. The item is gone by now, so a redelivered record
        could not find these targets again: a failure here is final (dead-lettered with the targets)."""
        extra = dataclasses.replace(
            changed,
            objects=tuple(o for o in changed.objects if o not in planned.objects),
            prefixes=tuple(p for p in changed.prefixes if p not in planned.prefixes),
            links=tuple(q for q in changed.links if q not in planned.links),
            unsafe=tuple(u for u in changed.unsafe if u not in planned.unsafe),
        )
        follow = await self._execute(extra, run)
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
        result.planned.extend(nested.planned)
        result.purged.extend(nested.purged)
        result.deleted_items.extend(nested.deleted_items)
        return not nested.errors

    def _count_gone(self, versions: set[ObjectVersion], result: ExecutionResult) -> None:
        markers = sum(v.is_delete_marker for v in versions)
        result.tally += Tally(object_versions=len(versions) - markers, delete_markers=markers)
        self._metrics.artifacts.labels("object_version", "deleted").inc(len(versions) - markers)
        self._metrics.artifacts.labels("delete_marker", "deleted").inc(markers)


def _resume_after(
    page: Sequence[ObjectVersion], refused: Mapping[ObjectVersion, str], after: ObjectVersion | None
) -> ObjectVersion | None:
    """Where the next listing may start: after the page's refused version that S3 lists last (keys in
    binary order, which is Python's for str; any one of a key's versions will do, everything before it on
    the page having been deleted or refused), or where this listing started if it refused nothing."""
    last = after
    for version in page:
        if version in refused and (last is None or version.key >= last.key):
            last = version
    return last


def _keeps(query: LinkQuery, plan: DeletionPlan) -> bool:
    """Whether a linked item must stay although its own work is done.

    It stays when its identifiers cannot render (it is the only pointer to everything it links); when a
    refusal does not name the target it refused (a value that is not an s3:// URI, an unusable link value
    or link scope: the item is the only record of it); and, reached through a parent-scoped link, when any
    of its targets lies outside the parent's scope: evidence that it is not this parent's child (a
    tampered link value), so deleting it could delete another item's data.
    """
    if plan.blocked or any(u.reason is not UnsafeReason.OUT_OF_SCOPE for u in plan.unsafe):
        return True
    return bool(plan.unsafe) and query.scope is not ScopeMode.OWN


def _key_text(key: Mapping[str, object]) -> str:
    return ", ".join(f"{name}={value}" for name, value in key.items())
