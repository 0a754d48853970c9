"""Redrive a dead letter: carry out its stored plan again, through the same checks, then resolve it.

Before any call the plan is checked against the rules (``core.letters.check``: every scope one the rules
render, every target inside them, every link one the rules have); a plan that fails is refused and nothing
runs. The item's key must hold no item again (its artifacts would share the scope). Then the worker's own
``Executor`` deletes what is left (every version of each object and under each prefix; linked items found by
their key condition, each with its own artifacts, deleted only while still linked): idempotent, so what
went already counts as absent. A target the scope check refused is never executed; a letter holding one
stays pending for a person. Only a letter whose work finished is resolved, conditionally (still pending),
and only once the item's receipt says so (``ReceiptWriter.redriven``): a receipt that cannot be written
leaves the letter pending, as a record waits for its receipt. A dry run writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog

from reconciler.core.letters import LetterPlan, check, recheck_refused
from reconciler.core.outcomes import Tally
from reconciler.core.spec import RuleSet
from reconciler.errors import ReconcilerError
from reconciler.execution import ExecutionResult, Executor, Planned
from reconciler.observability.metrics import Metrics
from reconciler.ports import DeadLetter, DeadLetterStore, ItemStore, LetterKind

if TYPE_CHECKING:
    from reconciler.receipts import ReceiptWriter

log = structlog.get_logger("reconciler.redrive")

NOT_REDRIVABLE: dict[LetterKind, str] = {
    "trimmed": "stream records expired unread: there is no record, so no plan; the worker's orphan sweep"
    " covers the gap's files (at once, and again a minimum age later): resolve it after that sweep",
    "undecodable": "the record could not be decoded: there is no image, so no plan",
    "no_image": "the REMOVE carried no old image: its artifacts cannot be named",
    "recreated": "the item was written again under its key and its artifacts share the scope: ask the"
    " owning service, delete by hand",
}
"""Kinds redrive never executes, and why. ``failed`` is redriven; ``unsafe`` is checked again, and its
refused targets stay refused, so it stays pending."""


class Verdict(StrEnum):
    """What a redrive did with one letter; also the ``outcome`` label of the redriven counter."""

    RESOLVED = "resolved"  # the plan ran to the end and the letter is resolved
    REFUSED = "refused"  # a check refused a target, or the item exists again: a person must look
    FAILED = "failed"  # AWS failed: the letter stays pending, redrive again later
    SKIPPED = "skipped"  # resolved already (or meanwhile): nothing to do
    NOT_REDRIVABLE = "not_redrivable"  # a kind redrive never runs, or no plan: a person must look
    PLANNED = "planned"  # a dry run: what a redrive would delete (not counted)
    MISSING = "missing"  # no letter has this id (not counted)


@dataclass(slots=True)
class Redriven:
    letter_id: str
    kind: str
    verdict: Verdict
    detail: str
    tally: Tally = field(default_factory=Tally)
    planned: list[Planned] = field(default_factory=list)


class Redriver:
    def __init__(
        self,
        *,
        rules: RuleSet,
        store: DeadLetterStore,
        executor: Executor,
        items: ItemStore,
        metrics: Metrics,
        clock: Callable[[], dt.datetime],
        dry_run: bool = False,
        receipts: ReceiptWriter | None = None,
    ) -> None:
        """``executor`` must be a dry-run executor when ``dry_run`` is set; ``receipts`` updates the item's
        receipt before a letter is resolved (None: no receipts, as a worker without a receipt table)."""
        self._rules = rules
        self._store = store
        self._executor = executor
        self._items = items
        self._metrics = metrics
        self._clock = clock
        self._dry_run = dry_run
        self._receipts = receipts

    async def pending(self, kind: LetterKind) -> list[str]:
        """The ids of the pending letters of ``kind`` (read from the index, which lags a little)."""
        return [letter.letter_id async for letter in self._store.list(kind=kind, status="pending")]

    async def redrive(self, letter_id: str) -> Redriven:
        letter = await self._store.get(letter_id)
        if letter is None:
            return Redriven(letter_id, "?", Verdict.MISSING, "no dead letter has this id")
        outcome = await self._redrive(letter)
        if not self._dry_run:
            self._metrics.dead_letters_redriven.labels(letter.kind, outcome.verdict.value).inc()
        log.info(
            "dead_letter.redriven",
            letter_id=letter_id,
            kind=letter.kind,
            verdict=outcome.verdict.value,
            detail=outcome.detail,
            versions=outcome.tally.object_versions,
            markers=outcome.tally.delete_markers,
            items=outcome.tally.items,
        )
        return outcome

    async def _redrive(self, letter: DeadLetter) -> Redriven:
        if letter.status == "resolved":
            at = letter.resolved_at.isoformat() if letter.resolved_at else "an unknown time"
            return _said(letter, Verdict.SKIPPED, f"resolved already, at {at}")
        if letter.kind in NOT_REDRIVABLE:
            why = NOT_REDRIVABLE[letter.kind]
            return _said(letter, Verdict.NOT_REDRIVABLE, f"{letter.kind} letters are not redriven: {why}")
        if letter.plan is None:
            why = "the letter holds no readable plan: follow the runbook"
            return _said(letter, Verdict.NOT_REDRIVABLE, why)
        if problems := check(letter.plan, self._rules):
            detail = "plan refused by the scope check, nothing ran: " + "; ".join(problems)
            return _said(letter, Verdict.REFUSED, detail)
        try:
            return await self._run(letter, letter.plan)
        except ReconcilerError as exc:
            return _said(letter, Verdict.FAILED, f"left pending: {exc}")

    async def _run(self, letter: DeadLetter, plan: LetterPlan) -> Redriven:
        if await self._exists_again(plan):
            return _said(letter, Verdict.REFUSED, "the item exists again under its key: nothing ran")
        result = await self._executor.execute(plan.deletion_plan())
        if result.errors:
            errors = "; ".join(sorted({str(e) for e in result.errors}))
            return _said(letter, Verdict.FAILED, f"left pending: {errors}", result.tally)
        return await self._settle(letter, plan, result)

    async def _settle(self, letter: DeadLetter, plan: LetterPlan, result: ExecutionResult) -> Redriven:
        """After a run without errors: what was refused keeps the letter pending; else it is resolved."""
        refused = [f"{s.unsafe.target}: {s.unsafe.reason.value}" for s in result.unsafe]
        refused += recheck_refused(plan)
        if refused:
            stays = "refused targets stay refused, the letter stays pending: " + "; ".join(refused)
            detail = f"dry run; {stays}" if self._dry_run else stays
            return Redriven(
                letter.letter_id, letter.kind, Verdict.REFUSED, detail, result.tally, result.planned
            )
        if self._dry_run:
            return Redriven(letter.letter_id, letter.kind, Verdict.PLANNED, "dry run", planned=result.planned)
        if await self._exists_again(plan):
            return _said(letter, Verdict.REFUSED, "the item was written again while redriven", result.tally)
        if self._receipts is not None and not await self._receipts.redriven(letter, plan, result):
            return _said(letter, Verdict.FAILED, "left pending: its receipt was not written", result.tally)
        if not await self._store.resolve(letter.letter_id, self._clock()):
            return _said(letter, Verdict.SKIPPED, "resolved meanwhile by someone else", result.tally)
        return _said(letter, Verdict.RESOLVED, "every target is gone", result.tally)

    async def _exists_again(self, plan: LetterPlan) -> bool:
        return await self._items.get(plan.table, plan.key) is not None


def _said(letter: DeadLetter, verdict: Verdict, detail: str, tally: Tally | None = None) -> Redriven:
    return Redriven(letter.letter_id, letter.kind, verdict, detail, tally or Tally())
