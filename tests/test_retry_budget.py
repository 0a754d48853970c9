"""The retry budget: a record that keeps failing is dead-lettered with what it still asks for, after
``max_attempts`` or once older than ``max_record_age_seconds``, and the shard moves on past it. A letter that
cannot be written keeps the record pending: the checkpoint never passes work that is neither done nor
durably recorded."""

from __future__ import annotations

import asyncio
import datetime as dt

from conftest import World, consumer_for, fast_settings

from reconciler.core.outcomes import Outcome
from reconciler.core.records import StreamRecord, Undecodable
from reconciler.processing import Origin
from reconciler.testing import FakeLeaseStore, FakeStreamSource, eventually, stream_record

BUDGET = fast_settings(max_attempts=3, retry_backoff_seconds=0.001)
PLANTED = "PLANTED-7f3a-never-in-a-letter"


def _shard(world: World, removals: int) -> tuple[FakeStreamSource, FakeLeaseStore]:
    source, leases = FakeStreamSource(), FakeLeaseStore()
    source.add_shard("transcripts", "shardId-1", closed=True)
    for n in range(1, removals + 1):
        world.add_transcript("acct-1", f"tr-{n}")
        image = world.image("acct-1", f"tr-{n}") | {"customer_note": PLANTED}
        source.append("shardId-1", stream_record(n, old_image=image, identity="botocore"))
    return source, leases


def _poison(world: World, sequence: int) -> list[int]:
    """Record ``sequence`` crashes the processor every time; returns the attempts seen."""
    seen: list[int] = []
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        if record.sequence == sequence:
            seen.append(sequence)
            raise RuntimeError(PLANTED)  # an error's message is never written to a letter or log
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    return seen


async def test_fault_a_poison_record_is_dead_lettered_after_its_attempts_and_the_shard_moves_on(
    world: World,
) -> None:
    source, leases = _shard(world, 4)
    attempts = _poison(world, 2)
    consumer = consumer_for(world, source, source.shard("shardId-1"), leases, BUDGET)
    await asyncio.wait_for(consumer.run(), timeout=5)

    assert consumer.finished  # read to its end and SHARD_END: nothing waits for the poison record
    assert attempts == [2, 2, 2]
    [letter] = world.dead_letters.letters.values()
    assert (letter.kind, letter.sequence_number, letter.attempts) == ("failed", f"{2:021d}", 3)
    assert letter.reason == "gave up after 3 attempts: unexpected RuntimeError"
    assert letter.first_attempt is not None
    assert letter.last_attempt is not None
    assert letter.first_attempt <= letter.last_attempt
    assert "object: s3://stt-uploads/acct-1/tr-2/audio.wav" in letter.targets
    assert "prefix: s3://stt-transcripts/acct-1/tr-2/" in letter.targets
    assert "linked: speech_outputs where transcript_id = tr-2" in letter.targets
    assert PLANTED not in repr(letter)
    assert [world.held_by("acct-1", f"tr-{n}") == 0 for n in range(1, 5)] == [True, False, True, True]
    assert world.sample("reconciler_record_outcomes_total", table="transcripts", outcome="dead_lettered") == 1
    assert world.sample("reconciler_deletions_unfinished_total", cause="ttl") == 1
    assert world.sample("reconciler_dead_letters_total", kind="failed") == 1


async def test_fault_a_record_older_than_the_age_limit_is_dead_lettered_at_its_first_failure(
    world: World,
) -> None:
    source, leases = _shard(world, 1)
    world.items.fail_deletes = True  # a linked item's delete keeps being throttled
    old = world.clock.now - dt.timedelta(hours=13)
    source.records_by_shard["shardId-1"][0]["dynamodb"]["ApproximateCreationDateTime"] = old  # type: ignore[index]
    settings = fast_settings(max_attempts=50, max_record_age_seconds=12 * 3600)
    consumer = consumer_for(world, source, source.shard("shardId-1"), leases, settings)
    await asyncio.wait_for(consumer.run(), timeout=5)

    [letter] = world.dead_letters.letters.values()
    assert (letter.kind, letter.attempts) == ("failed", 1)
    assert letter.reason.startswith("gave up after 1 attempts: ")
    assert consumer.finished


async def test_fault_a_letter_that_cannot_be_written_keeps_the_record_and_the_checkpoint_waits(
    world: World,
) -> None:
    source, leases = _shard(world, 2)
    _poison(world, 1)
    world.dead_letters.fail = True
    consumer = consumer_for(world, source, source.shard("shardId-1"), leases, BUDGET)
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: world.held_by("acct-1", "tr-2") == 0)  # the next record is not held up
        await asyncio.sleep(0.05)  # several more attempts, each past the budget, each letter refused
        assert (leases.positions.get((source.arn("transcripts"), "shardId-1"))) is None
        assert not consumer.finished
        world.dead_letters.fail = False
        await eventually(lambda: consumer.finished)
    finally:
        consumer.stop()
        await task
    assert leases.history[-2:] == [f"{2:021d}", "SHARD_END"]
    assert [letter.sequence_number for letter in world.dead_letters.letters.values()] == [f"{1:021d}"]
