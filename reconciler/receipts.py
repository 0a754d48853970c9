"""Receipts: the confirmation of every deletion, written once its work is done, and the re-check behind it.

A receipt holds identifiers only: the item's table, key and key hash, the cause, the item's expiry, the
stream event's time, the completion time, counts by artifact kind, the dead letter that holds refused
targets (if any), the targets themselves (S3 URIs, linked items' keys) and the result of re-checking them
right after the deletion: ``verified`` (all absent), ``leftover`` (some are there again) or ``not_checked``
(the re-check could not read). ``reconciler verify`` re-checks the same targets later.

The checkpoint waits for the receipt: a record whose receipt cannot be written stays pending and is retried
(its deletion, already done, finds everything absent), so no deletion is ever confirmed by nobody. A receipt
that failed to be written is kept here and written as it was on the retry; one that was written is kept by the
store, so a redelivered record writes the same receipt.

A redrive that finishes a dead letter's work (``redrive.py``) updates the item's receipt the same way a retry
does: both runs' counts and targets, the redrive's completion time and re-check, and the letter marked
``redriven``; an item the worker never confirmed (its record was given up) gets its first receipt then.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

import structlog

from reconciler.core.classify import Cause, ttl_expiry
from reconciler.core.letters import LetterPlan
from reconciler.core.outcomes import Pending
from reconciler.core.plan import DeletionPlan, key_hash
from reconciler.core.records import StreamRecord
from reconciler.core.scope import S3Location
from reconciler.core.spec import RuleSet
from reconciler.errors import ReconcilerError
from reconciler.execution import ExecutionResult
from reconciler.observability.metrics import Metrics
from reconciler.ports import (
    ArtifactStore,
    DeadLetter,
    ItemKey,
    ItemStore,
    Receipt,
    ReceiptCounts,
    ReceiptStore,
    Verification,
)

if TYPE_CHECKING:
    from reconciler.processing import Origin

log = structlog.get_logger("reconciler.receipts")

MAX_STORED_TARGETS = 1000
MAX_STORED_TARGET_CHARACTERS = 200_000  # a DynamoDB item holds at most 400 KB
MAX_UNWRITTEN = 10_000  # receipts kept for a retry after a failed write; older ones are rebuilt
CHECKS_IN_FLIGHT = 16
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Leftover:
    """A target found again: an S3 object version (``where`` an s3:// URI, ``what`` its version id, or
    ``delete marker <id>``) or a linked item (``where`` its table, ``what`` its key)."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where} {self.what}"


@dataclass(frozen=True, slots=True)
class Targets:
    """What a deletion emptied and deleted, to be re-checked: exact keys, prefixes, linked items."""

    objects: tuple[S3Location, ...] = ()
    prefixes: tuple[S3Location, ...] = ()
    items: tuple[ItemKey, ...] = ()

    @classmethod
    def of(cls, receipt: Receipt) -> Targets:
        return cls(receipt.objects, receipt.prefixes, receipt.items)

    @classmethod
    def done_by(cls, result: ExecutionResult) -> Targets:
        purged = list(dict.fromkeys((p.location, p.exact) for p in result.purged))
        items = {(i.table, key_hash(i.table, i.key)): i for i in result.deleted_items}
        return cls(
            tuple(location for location, exact in purged if exact),
            tuple(location for location, exact in purged if not exact),
            tuple(items.values()),
        )

    def __len__(self) -> int:
        return len(self.objects) + len(self.prefixes) + len(self.items)

    def capped(self) -> tuple[Targets, int]:
        """The targets a receipt can store, and how many were left out."""
        count = characters = 0

        def fits(text: str) -> bool:
            nonlocal count, characters
            count, characters = count + 1, characters + len(text)
            return count <= MAX_STORED_TARGETS and characters <= MAX_STORED_TARGET_CHARACTERS

        kept = Targets(
            tuple(o for o in self.objects if fits(str(o))),
            tuple(p for p in self.prefixes if fits(str(p))),
            tuple(i for i in self.items if fits(i.table + repr(dict(i.key)))),
        )
        return kept, len(self) - len(kept)


async def leftovers(
    targets: Targets, artifacts: ArtifactStore, items: ItemStore, concurrency: int = CHECKS_IN_FLIGHT
) -> list[Leftover]:
    """Every target still there, read-only: each exact key and prefix listed again (every version and delete
    marker), each linked item read again by key (strongly consistent). Raises ``ReconcilerError`` when AWS
    cannot answer."""
    slots = asyncio.Semaphore(concurrency)

    async def bounded(check: Callable[[], Awaitable[list[Leftover]]]) -> list[Leftover]:
        async with slots:
            return await check()

    by_table: dict[str, list[ItemKey]] = {}
    for item in targets.items:
        by_table.setdefault(item.table, []).append(item)
    checks: list[Callable[[], Awaitable[list[Leftover]]]] = [
        *(functools.partial(_listed, artifacts, o, exact=True) for o in targets.objects),
        *(functools.partial(_listed, artifacts, p, exact=False) for p in targets.prefixes),
        *(functools.partial(_read, items, table, keys) for table, keys in by_table.items()),
    ]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(bounded(check)) for check in checks]
    except* ReconcilerError as failed:
        raise failed.exceptions[0] from None  # one of them says why the re-check could not read
    return [leftover for task in tasks for leftover in task.result()]


async def _listed(artifacts: ArtifactStore, location: S3Location, *, exact: bool) -> list[Leftover]:
    found: list[Leftover] = []
    async for page in artifacts.list_versions(location, exact=exact):
        for version in page.versions:
            what = f"delete marker {version.version_id}" if version.is_delete_marker else version.version_id
            found.append(Leftover(str(S3Location(location.bucket, version.key)), what))
    return found


async def _read(items: ItemStore, table: str, keys: Sequence[ItemKey]) -> list[Leftover]:
    current = await items.get_many(table, [k.key for k in keys])
    return [Leftover(table, key_text(k.key)) for k, image in zip(keys, current, strict=True) if image]


def key_text(key: Mapping[str, object]) -> str:
    """An item key as a leftover names it: ``name=value, ...``."""
    return ", ".join(f"{name}={value}" for name, value in key.items())


class ReceiptWriter:
    """Builds, verifies and stores the receipt of each finished deletion (``processing.py`` calls
    ``write`` where ``deletion.completed`` is logged)."""

    def __init__(  # noqa: PLR0917 - the stores it reads and writes, and how it reports
        self,
        store: ReceiptStore,
        artifacts: ArtifactStore,
        items: ItemStore,
        rules: RuleSet,
        metrics: Metrics,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._items = items
        self._rules = rules
        self._metrics = metrics
        self._clock = clock
        self._unwritten: collections.OrderedDict[str, Receipt] = collections.OrderedDict()

    async def write(  # noqa: PLR0917 - the record's context, passed through
        self,
        origin: Origin,
        record: StreamRecord,
        cause: Cause,
        plan: DeletionPlan,
        result: ExecutionResult,
        completed: dt.datetime,
    ) -> Pending | None:
        """Store the deletion's receipt; None once it is stored, else ``Pending`` (the record is retried)."""
        event = f"{origin.stream_arn}#{origin.shard_id}#{record.sequence_number}"
        receipt = self._unwritten.pop(event, None)
        if receipt is None or _removed(result):
            receipt = await self._built(origin, record, cause, plan, result, completed, event, receipt)
        hashed = key_hash(receipt.table, receipt.key)
        try:
            new = await self._store.put(receipt)
        except ReconcilerError as exc:
            self._keep(event, receipt)
            self._metrics.failures.labels("receipt", type(exc).__name__).inc()
            log.error("receipt.write_failed", key_hash=hashed, error=str(exc))
            return Pending(record.sequence_number, f"receipt not written: {exc}")
        if new:  # a redelivered record finds its receipt written: counted once
            self._metrics.receipts.labels(receipt.table, receipt.verification).inc()
        log.info("receipt.written", key_hash=hashed, verification=receipt.verification, new=new)
        return None

    async def _built(  # noqa: PLR0917 - the record's context, passed through
        self,
        origin: Origin,
        record: StreamRecord,
        cause: Cause,
        plan: DeletionPlan,
        result: ExecutionResult,
        completed: dt.datetime,
        event: str,
        earlier: Receipt | None,
    ) -> Receipt:
        targets = Targets.done_by(result)
        verification, leftover = await self._verify(origin.table, plan, targets)
        stored, omitted = targets.capped()
        letter = f"{event}#unsafe" if result.unsafe else None  # DeadLetter.letter_id of the record's letter
        receipt = Receipt(
            table=origin.table,
            key=dict(plan.key),
            cause=cause.value,
            event=event,
            event_time=record.created_at,
            completed_at=completed,
            counts=_counts(result),
            verification=verification,
            expires_at=ttl_expiry(record.old_image, self._rules.tables[origin.table].ttl_attribute),
            leftover=leftover,
            verified_at=self._clock() if verification != "not_checked" else None,
            dead_letter_id=letter,
            dead_letter_kind="unsafe" if letter else None,
            dead_letter_status="pending" if letter else None,
            objects=stored.objects,
            prefixes=stored.prefixes,
            items=stored.items,
            omitted=omitted,
        )
        return receipt if earlier is None else _after_retry(earlier, receipt)

    async def redriven(self, letter: DeadLetter, plan: LetterPlan, result: ExecutionResult) -> bool:
        """Update the item's receipt once a redrive finished ``letter``'s work, before the letter is resolved:
        merged into the receipt of the letter's stream record, or the first one; a later deletion's receipt
        stays. False when the receipt could not be read or written (the letter stays pending)."""
        hashed = key_hash(plan.table, plan.key)
        event = f"{letter.stream_arn}#{letter.shard_id}#{letter.sequence_number}"
        try:
            held = await self._store.get(plan.table, hashed)
            if held is not None and held.event != event and _later(held, letter):
                log.info("receipt.kept", key_hash=hashed, why="a later deletion of the key has the receipt")
                return True
            earlier = held if held is not None and held.event == event else None
            receipt = await self._rebuilt(letter, plan, result, event, earlier)
            written = await self._store.update(receipt)
        except ReconcilerError as exc:
            self._metrics.failures.labels("receipt", type(exc).__name__).inc()
            log.error("receipt.write_failed", key_hash=hashed, error=str(exc))
            return False
        if written and earlier is None:  # an updated receipt was counted when first written
            self._metrics.receipts.labels(receipt.table, receipt.verification).inc()
        log.info("receipt.redriven", key_hash=hashed, verification=receipt.verification, written=written)
        return True

    async def _rebuilt(
        self,
        letter: DeadLetter,
        plan: LetterPlan,
        result: ExecutionResult,
        event: str,
        earlier: Receipt | None,
    ) -> Receipt:
        done = Targets.done_by(result)
        checked = done if earlier is None else _joined(Targets.of(earlier), done)
        verification, leftover = await self._verify(plan.table, plan.deletion_plan(), checked)
        completed = self._clock()
        stored, omitted = done.capped()
        fresh = Receipt(
            table=plan.table,
            key=dict(plan.key),
            cause=letter.cause or "unknown",
            event=event,
            # The letter keeps no record time: its first attempt is the nearest time after it.
            event_time=earlier.event_time if earlier else letter.first_attempt or letter.created_at,
            completed_at=completed,
            counts=_counts(result),
            verification=verification,
            expires_at=earlier.expires_at if earlier else None,
            leftover=leftover,
            verified_at=completed if verification != "not_checked" else None,
            dead_letter_id=letter.letter_id,
            dead_letter_kind=letter.kind,
            dead_letter_status="redriven",
            objects=stored.objects,
            prefixes=stored.prefixes,
            items=stored.items,
            omitted=omitted,
        )
        return fresh if earlier is None else _after_retry(earlier, fresh)

    async def _verify(self, table: str, plan: DeletionPlan, targets: Targets) -> tuple[Verification, int]:
        hashed = key_hash(table, plan.key)
        try:
            found = await leftovers(targets, self._artifacts, self._items)
        except ReconcilerError as exc:
            log.warning("receipt.not_checked", key_hash=hashed, error=str(exc))
            return "not_checked", 0
        if not found:
            return "verified", 0
        self._metrics.verification_failures.labels(table).inc()
        log.error(
            "receipt.leftover", key_hash=hashed, leftover=len(found), targets=[str(f) for f in found[:20]]
        )
        return "leftover", len(found)

    def _keep(self, event: str, receipt: Receipt) -> None:
        self._unwritten[event] = receipt
        while len(self._unwritten) > MAX_UNWRITTEN:
            self._unwritten.popitem(last=False)


def _removed(result: ExecutionResult) -> bool:
    return bool(result.tally.object_versions or result.tally.delete_markers or result.tally.items)


def _counts(result: ExecutionResult) -> ReceiptCounts:
    tally = result.tally
    return ReceiptCounts(
        object_versions=tally.object_versions,
        delete_markers=tally.delete_markers,
        under_prefixes=sum(p.removed for p in result.purged if not p.exact),
        linked_items=tally.items,
        absent=tally.absent,
    )


def _after_retry(earlier: Receipt, fresh: Receipt) -> Receipt:
    """The receipt of a record retried after its receipt could not be written, whose retry deleted more:
    both runs' counts, every target, and the newer re-check."""
    first, then = earlier.counts, fresh.counts
    counts = ReceiptCounts(
        object_versions=first.object_versions + then.object_versions,
        delete_markers=first.delete_markers + then.delete_markers,
        under_prefixes=first.under_prefixes + then.under_prefixes,
        linked_items=first.linked_items + then.linked_items,
        absent=first.absent,
    )
    stored, overflow = _joined(Targets.of(earlier), Targets.of(fresh)).capped()
    omitted = max(earlier.omitted, fresh.omitted) + overflow
    return replace(
        fresh,
        counts=counts,
        objects=stored.objects,
        prefixes=stored.prefixes,
        items=stored.items,
        omitted=omitted,
    )


def _later(held: Receipt, letter: DeadLetter) -> bool:
    """Whether ``held``, the receipt of another record of ``letter``'s shard, confirms a later deletion: the
    sequence numbers say so exactly. (Across shards the store compares event times, and the letter's stands
    in for its record's by its first attempt, which came after it.)"""
    stream, shard, sequence = held.event.rsplit("#", 2)
    same_shard = (stream, shard) == (letter.stream_arn, letter.shard_id)
    return same_shard and int(sequence) > int(letter.sequence_number)  # 21 to 40 digits: as numbers


def _joined(first: Targets, second: Targets) -> Targets:
    return Targets(
        _union(first.objects, second.objects),
        _union(first.prefixes, second.prefixes),
        _union(first.items, second.items),
    )


def _union(first: Iterable[T], second: Iterable[T]) -> tuple[T, ...]:
    return tuple(dict.fromkeys((*first, *second)))
