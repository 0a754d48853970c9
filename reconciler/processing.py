"""One stream record in, one typed outcome out: classify, plan, execute, dead-letter, observe."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from reconciler.core.classify import Cause, ttl_expiry
from reconciler.core.decide import decide
from reconciler.core.dynamodb_json import Image
from reconciler.core.letters import (
    MAX_LETTER_BYTES,
    MAX_LETTER_TARGETS,
    MAX_PLAN_CHARACTERS,
    LetterPlan,
    Refused,
    capped,
    utf8_bytes,
)
from reconciler.core.outcomes import DeadLettered, Deleted, Filtered, Ignored, Outcome, Pending, Tally
from reconciler.core.plan import DeletionPlan, Unsafe, key_hash, resolve
from reconciler.core.records import StreamRecord, Undecodable
from reconciler.core.spec import RuleSet
from reconciler.errors import ReconcilerError, TransientError
from reconciler.execution import ExecutionResult, Executor, RecordRefusals, ScopedUnsafe
from reconciler.observability.metrics import Metrics
from reconciler.ports import DeadLetter, DeadLetterStore, ItemStore, LetterKind
from reconciler.receipts import ReceiptWriter
from reconciler.shadow import ShadowReport

log = structlog.get_logger("reconciler.processing")

MAX_REASON_ERRORS = 10  # distinct errors a failure's reason names: a letter is one DynamoDB item (400 KB)
MAX_LOGGED_REFUSALS = 100  # per record: an image naming 100,000 refused targets is one summary, not a flood

Clock = Callable[[], dt.datetime]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from: the source table and its shard."""

    table: str
    stream_arn: str
    shard_id: str


class RecordProcessor:
    def __init__(
        self,
        *,
        rules: RuleSet,
        executor: Executor,
        dead_letters: DeadLetterStore,
        metrics: Metrics,
        clock: Clock,
        items: ItemStore,
        receipts: ReceiptWriter | None = None,
        shadow: ShadowReport | None = None,
    ) -> None:
        """With ``shadow`` (a dry run), what a real run would delete or refuse is reported to it instead of
        the deletion, refusal and lag metrics, and no receipt is written."""
        self._receipts = receipts
        self._rules = rules
        self._executor = executor
        self._items = items
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._clock = clock
        self._shadow = shadow

    async def process(self, origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        return self._counted(origin, await self._process(origin, record))

    async def give_up(
        self, origin: Origin, record: StreamRecord | Undecodable, pending: Pending, attempts: Attempts
    ) -> Outcome:
        """The record's retry budget is spent: dead-letter what it still asks for (its plan's objects,
        prefixes and links: identifiers and S3 URIs, never image content) with the last error and the
        attempts, so the checkpoint can move on. Pending, and tried again, if the letter cannot be written."""
        targets: tuple[str, ...] = ()
        try:
            cause, plan = self._still_asked(origin, record)
        except Exception as exc:  # noqa: BLE001 - a record that crashes planning must still be let go
            cause, plan = None, None
            targets = (f"targets unknown: planning failed with {type(exc).__name__}",)
        log.error(
            "record.gave_up",
            sequence_number=record.sequence_number,
            attempts=attempts.count,
            error=pending.error,
        )
        reason = f"gave up after {attempts.count} attempts: {pending.error}"
        if plan is not None:
            targets = plan_targets(plan)
        outcome = await self._dead_letter(
            origin, record, "failed", reason, cause, targets=targets, attempts=attempts, plan=plan
        )
        return self._counted(origin, outcome)

    def _still_asked(
        self, origin: Origin, record: StreamRecord | Undecodable
    ) -> tuple[Cause | None, DeletionPlan | None]:
        """The record's cause and the plan of what it asks for, if it has one."""
        if not isinstance(record, StreamRecord):
            return None, None
        table = self._rules.tables[origin.table]
        cause = decide(record, table).cause
        if cause is None or record.old_image is None:
            return cause, None
        return cause, resolve(table, record.old_image)

    def _counted(self, origin: Origin, outcome: Outcome) -> Outcome:
        self._metrics.outcomes.labels(origin.table, _outcome_label(outcome)).inc()
        if isinstance(outcome, DeadLettered) and outcome.cause is not None and self._shadow is None:
            # A deletion given up before every artifact was gone: the SLO counts it as late, not as absent.
            self._metrics.unfinished.labels(outcome.cause.value).inc()
        return outcome

    async def _process(self, origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        if isinstance(record, Undecodable):
            self._metrics.records.labels(origin.table, "undecodable", "none").inc()
            log.error("record.undecodable", sequence_number=record.sequence_number, reason=record.reason)
            return await self._dead_letter(origin, record, "undecodable", record.reason)
        decision = decide(record, self._rules.tables[origin.table])
        cause = decision.cause
        self._metrics.records.labels(origin.table, record.event_name.value, cause or "none").inc()
        if cause is None:
            log.debug(
                "record.ignored", sequence_number=record.sequence_number, event_name=record.event_name.value
            )
            return Ignored(record.sequence_number)
        if decision.verdict == "filtered":
            # Not ours to cascade (a migration's DeleteItem, an admin's): counted, nothing deleted.
            key = key_hash(origin.table, self._item_key(origin, record))
            log.info("record.filtered", key_hash=key, cause=cause.value, why=decision.detail)
            return Filtered(record.sequence_number, cause, decision.detail)
        if record.old_image is None:
            log.error("record.no_old_image", sequence_number=record.sequence_number)
            return await self._dead_letter(origin, record, "no_image", decision.detail, cause)
        return await self._delete(origin, record, cause, record.old_image)

    async def _delete(self, origin: Origin, record: StreamRecord, cause: Cause, image: Image) -> Outcome:
        table = self._rules.tables[origin.table]
        plan = resolve(table, image)
        # The same key written again shares the scope: deleting would take the new item's artifacts.
        refusal = await self._exists_again(origin, record, cause, plan, "the item exists again")
        if refusal is not None:
            return refusal
        result = await self._executor.execute(plan, self._recorder(origin, record, cause, plan))
        self._report_unsafe(result)
        reason = "the item was written again while its artifacts were deleted; check its new ones"
        refusal = await self._exists_again(origin, record, cause, plan, reason, result)
        if refusal is not None:
            return refusal
        if result.errors:
            return await self._failed(origin, record, cause, plan, result)
        if plan.blocked:  # an unsafe identifier: nothing could be planned, so nothing was deleted
            return await self._dead_letter(
                origin, record, "unsafe", "unsafe identifier", cause, result, plan=plan
            )
        if result.unsafe:
            reason = f"{len(result.unsafe)} targets refused by the scope check"
            letter = await self._dead_letter(origin, record, "unsafe", reason, cause, result, plan=plan)
            if isinstance(letter, Pending):
                return letter
        return await self._finished(origin, record, cause, plan, result)

    async def _finished(
        self, origin: Origin, record: StreamRecord, cause: Cause, plan: DeletionPlan, result: ExecutionResult
    ) -> Deleted | Pending:
        completed = self._clock()
        unsafe = tuple(s.unsafe for s in result.unsafe)
        if self._shadow is not None:  # nothing was deleted: no receipt, no lag to observe
            self._shadow.would_delete(origin.table, cause, plan.key, result)
            return Deleted(record.sequence_number, cause, result.tally, completed, unsafe)
        # Receipts are the audit trail: the record stays pending until its receipt is written.
        if self._receipts and (
            unwritten := await self._receipts.write(origin, record, cause, plan, result, completed)
        ):
            return unwritten
        self._observe_lag(record, cause, self._rules.tables[origin.table].ttl_attribute, completed)
        log.info(
            "deletion.completed",
            key_hash=key_hash(origin.table, plan.key),
            cause=cause.value,
            versions=result.tally.object_versions,
            markers=result.tally.delete_markers,
            items=result.tally.items,
            absent=result.tally.absent,
            unsafe=len(result.unsafe),
            pipeline_lag_seconds=round(max((completed - record.created_at).total_seconds(), 0.0), 3),
        )
        return Deleted(record.sequence_number, cause, result.tally, completed, unsafe)

    def _recorder(
        self, origin: Origin, record: StreamRecord, cause: Cause, plan: DeletionPlan
    ) -> RecordRefusals:
        """Writes the record's ``unsafe`` letter with every refusal so far, before a linked item holding
        refused targets is deleted. Refusals only accumulate: each call adds to what earlier calls (other
        linked items, other nesting levels) recorded, and the store adds a letter's targets to those it
        already holds, so a redelivered record never drops the refusals of items deleted the first time.
        False, and nothing is deleted, when one letter could not name them all.

        Linked items of one record call it concurrently (the executor's fan-out): ``seen`` is updated, checked
        and copied into the letter with no await in between, and each write adds its targets to the letter's,
        so every call returns only once its own refusals are durable, whatever order the writes land in. (The
        letter's ``reason`` count is the last writer's; the record's final letter sets it from the whole
        result.)"""
        seen: dict[tuple[str, str, Unsafe], ScopedUnsafe] = {}
        size = 0  # bytes of the letter's targets, as it names them

        async def record_refusals(refusals: Sequence[ScopedUnsafe]) -> bool:
            nonlocal size
            for scoped in refusals:
                key = (scoped.table, key_hash(scoped.table, scoped.key), scoped.unsafe)
                if key not in seen:
                    seen[key] = scoped
                    size += utf8_bytes(self._refusal(origin, scoped))
            if len(seen) > MAX_LETTER_TARGETS or size > MAX_LETTER_BYTES:
                return False
            reason = f"{len(seen)} targets refused by the scope check"
            so_far = ExecutionResult(unsafe=list(seen.values()))
            letter = await self._dead_letter(origin, record, "unsafe", reason, cause, so_far, plan=plan)
            if isinstance(letter, Pending):
                raise TransientError(letter.error)
            return True

        return record_refusals

    async def _exists_again(  # noqa: PLR0917 - the record's context, passed through
        self,
        origin: Origin,
        record: StreamRecord,
        cause: Cause,
        plan: DeletionPlan,
        reason: str,
        result: ExecutionResult | None = None,
    ) -> Outcome | None:
        """A dead letter (or Pending) if the deleted item's key holds an item again, else None."""
        try:
            current = await self._items.get(origin.table, plan.key)
        except ReconcilerError as exc:
            if exc.retriable:
                return Pending(record.sequence_number, f"cannot check the item: {exc}")
            why = f"cannot check the item: {exc}"
            return await self._dead_letter(origin, record, "failed", why, cause, plan=plan)
        if current is None:
            return None
        log.error("deletion.item_recreated", key_hash=key_hash(origin.table, plan.key))
        return await self._dead_letter(origin, record, "recreated", reason, cause, result, plan=plan)

    async def record_gap(self, origin: Origin, after: str | None) -> None:
        """Records after ``after`` were trimmed unread: leave a durable mark for the sweeper and operators."""
        letter = DeadLetter(
            source_table=origin.table,
            stream_arn=origin.stream_arn,
            shard_id=origin.shard_id,
            sequence_number=after or "0",
            event_id="",
            kind="trimmed",
            reason="stream records after this sequence number expired (24 h) before they were read",
            created_at=self._clock(),
        )
        if await self._dead_letters.put(letter):
            self._metrics.dead_letters.labels("trimmed").inc()

    def _item_key(self, origin: Origin, record: StreamRecord | Undecodable) -> dict[str, object]:
        """The record's ``Keys``, held to the table's key attributes: a malformed record's ``Keys`` may carry
        other attributes, and letters and key hashes hold identifiers only."""
        names = self._rules.tables[origin.table].key
        return {name: record.keys[name] for name in names if name in record.keys}

    @staticmethod
    def _refusal(origin: Origin, scoped: ScopedUnsafe) -> str:
        """A refused target as its letter names it: the reason, the target, and the linked item holding it."""
        linked = (
            ""
            if scoped.table == origin.table
            else f" (linked {scoped.table} {key_hash(scoped.table, scoped.key)})"
        )
        return f"{scoped.unsafe.reason.value}: {scoped.unsafe.target}{linked}"

    def _report_unsafe(self, result: ExecutionResult) -> None:
        """Every refusal counted; the first ``MAX_LOGGED_REFUSALS`` logged one by one, the rest in a sum."""
        if self._shadow is not None:
            self._shadow.would_refuse(result.unsafe, log_at_most=MAX_LOGGED_REFUSALS)
            return
        counted = collections.Counter((s.table, s.unsafe.reason.value) for s in result.unsafe)
        for (table, reason), count in counted.items():
            self._metrics.unsafe.labels(table, reason).inc(count)
        if len(result.unsafe) > MAX_LOGGED_REFUSALS:
            log.warning("deletion.unsafe_targets_not_logged", count=len(result.unsafe) - MAX_LOGGED_REFUSALS)
        for scoped in result.unsafe[:MAX_LOGGED_REFUSALS]:
            log.warning(
                "deletion.unsafe_target",
                table=scoped.table,
                key_hash=key_hash(scoped.table, scoped.key),
                target=scoped.unsafe.target,
                reason=scoped.unsafe.reason.value,
            )

    async def _failed(
        self, origin: Origin, record: StreamRecord, cause: Cause, plan: DeletionPlan, result: ExecutionResult
    ) -> Outcome:
        for error in result.errors:
            self._metrics.failures.labels("delete", type(error).__name__).inc()
        messages = sorted({str(e) for e in result.errors})
        summary = "; ".join(messages[:MAX_REASON_ERRORS])
        if len(messages) > MAX_REASON_ERRORS:
            summary += f"; and {len(messages) - MAX_REASON_ERRORS} more errors"
        if result.retriable:
            log.warning("deletion.retry", sequence_number=record.sequence_number, error=summary)
            return Pending(record.sequence_number, summary)
        log.error("deletion.failed", sequence_number=record.sequence_number, error=summary)
        return await self._dead_letter(origin, record, "failed", summary, cause, result, plan=plan)

    def _observe_lag(
        self, record: StreamRecord, cause: Cause, ttl_attribute: str | None, done: dt.datetime
    ) -> None:
        expiry = ttl_expiry(record.old_image, ttl_attribute)
        pipeline = (done - record.created_at).total_seconds()
        self._metrics.pipeline_lag.labels(cause.value).observe(max(pipeline, 0.0))
        if cause is Cause.REQUESTED or expiry is None:
            self._metrics.deletion_lag.labels(cause.value).observe(max(pipeline, 0.0))
            return
        self._metrics.ttl_service_lag.labels(cause.value).observe(
            max((record.created_at - expiry).total_seconds(), 0.0)
        )
        self._metrics.deletion_lag.labels(cause.value).observe(max((done - expiry).total_seconds(), 0.0))

    async def _dead_letter(  # noqa: PLR0917 - the record's context, passed through
        self,
        origin: Origin,
        record: StreamRecord | Undecodable,
        kind: LetterKind,
        reason: str,
        cause: Cause | None = None,
        result: ExecutionResult | None = None,
        *,
        targets: tuple[str, ...] = (),
        attempts: Attempts | None = None,
        plan: DeletionPlan | None = None,
    ) -> DeadLettered | Pending:
        refused = result.unsafe if result else []
        stored, reason = _stored_plan(plan, refused, reason)
        # Past the cap, the letter says how many more; linked items holding those were kept (see _recorder).
        named = itertools.chain(targets, (self._refusal(origin, s) for s in refused))
        targets = capped(named, len(targets) + len(refused))
        letter = DeadLetter(
            source_table=origin.table,
            stream_arn=origin.stream_arn,
            shard_id=origin.shard_id,
            sequence_number=record.sequence_number,
            event_id=record.event_id,
            kind=kind,
            reason=reason,
            created_at=self._clock(),
            cause=cause.value if cause else None,
            item_table=origin.table,
            item_key=self._item_key(origin, record),
            targets=targets,
            attempts=attempts.count if attempts else 0,
            first_attempt=attempts.first if attempts else None,
            last_attempt=attempts.last if attempts else None,
            plan=stored,
        )
        try:
            new = await self._dead_letters.put(letter)
        except ReconcilerError as exc:
            self._metrics.failures.labels("dead_letter", type(exc).__name__).inc()
            log.error("dead_letter.write_failed", sequence_number=record.sequence_number, error=str(exc))
            return Pending(record.sequence_number, f"dead letter not written: {exc}")
        if new:  # a redelivered record rewrites its letter: counted once
            self._metrics.dead_letters.labels(kind).inc()
        return DeadLettered(record.sequence_number, reason, cause, result.tally if result else Tally())


@dataclass(frozen=True, slots=True)
class Attempts:
    """How often a record was tried, and when first and last."""

    count: int
    first: dt.datetime
    last: dt.datetime


def _stored_plan(
    plan: DeletionPlan | None, refused: Sequence[ScopedUnsafe], reason: str
) -> tuple[LetterPlan | None, str]:
    """The plan a letter stores for redrive, with its refusals; None (and the reason says so) when it would
    not fit in a letter."""
    if plan is None:
        return None, reason
    stored = LetterPlan.of(plan, (Refused(s.table, s.unsafe.target, s.unsafe.reason.value) for s in refused))
    if stored.characters > MAX_PLAN_CHARACTERS:
        return None, f"{reason} (plan too large to store: {stored.characters} characters)"
    return stored, reason


def plan_targets(plan: DeletionPlan) -> tuple[str, ...]:
    """What a plan asks for, as a letter names it: S3 URIs and link queries (identifiers)."""
    return (
        *(f"object: {o}" for o in plan.objects),
        *(f"prefix: {p}" for p in plan.prefixes),
        *(f"linked: {q.table} where {q.attribute} = {q.value}" for q in plan.links),
    )


def _outcome_label(outcome: Outcome) -> str:
    match outcome:
        case Deleted():
            return "deleted"
        case Ignored():
            return "ignored"
        case Filtered():
            return "filtered"
        case DeadLettered():
            return "dead_lettered"
        case Pending():
            return "retry"
