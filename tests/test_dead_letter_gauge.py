"""The worker counts pending dead letters by kind for ``reconciler_dead_letters_pending``, every
``dead_letter_count_seconds``, from the store's index; a count that fails is counted and tried again, and
never stops the worker."""

from __future__ import annotations

import asyncio
import datetime as dt

from conftest import World, fast_settings

from reconciler.ports import DeadLetter, LetterKind
from reconciler.testing import FakeLeaseStore, FakeStreamSource, eventually
from reconciler.worker import Collaborators, Worker

ARN = "arn:aws:dynamodb:us-east-1:1:table/transcripts/stream/x"


def _letter(sequence: int, kind: LetterKind) -> DeadLetter:
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return DeadLetter("transcripts", ARN, "shardId-1", f"{sequence:021d}", f"e{sequence}", kind, "why", at)


async def test_pending_letters_are_counted_by_kind_and_a_failed_count_is_tried_again(world: World) -> None:
    kinds: tuple[LetterKind, ...] = ("failed", "failed", "unsafe", "failed")
    for n, kind in enumerate(kinds, start=1):
        await world.dead_letters.put(_letter(n, kind))
    await world.dead_letters.resolve(_letter(4, "failed").letter_id, world.clock.now)
    source = FakeStreamSource()
    source.add_shard("transcripts", "shardId-1")
    parts = Collaborators(
        source, FakeLeaseStore(), world.processor, world.metrics, dead_letters=world.dead_letters
    )
    worker = Worker(fast_settings(dead_letter_count_seconds=0.01), world.rules, parts, clock=world.clock)

    def pending(kind: str) -> float | None:
        return world.registry.get_sample_value("reconciler_dead_letters_pending", {"kind": kind})

    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: (pending("failed"), pending("unsafe"), pending("trimmed")) == (2, 1, 0))
        await world.dead_letters.resolve(_letter(1, "failed").letter_id, world.clock.now)
        await eventually(lambda: pending("failed") == 1)

        world.dead_letters.fail = True  # the table throttles: the last counts stay, the failure is counted
        failures = {"stage": "dead_letter_count", "error": "TransientError"}
        await eventually(
            lambda: (world.registry.get_sample_value("reconciler_failures_total", failures) or 0) >= 2
        )
        assert pending("failed") == 1
        assert worker.liveness()[0]
        world.dead_letters.fail = False
        await world.dead_letters.put(_letter(5, "trimmed"))
        await eventually(lambda: pending("trimmed") == 1)
    finally:
        world.dead_letters.fail = False
        worker.handle_exit()
        await asyncio.wait_for(task, timeout=5)  # the count stops with the worker
