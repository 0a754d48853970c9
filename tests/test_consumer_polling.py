"""How a shard consumer polls.

Idle backoff doubles up to a cap, an expired iterator is replaced, a trimmed gap is reported, a finished shard
is left alone, and every poll is time-stamped for the stall alert.
"""

from __future__ import annotations

import asyncio

import structlog.testing
from conftest import World, consumer_for, fast_settings

from reconciler.consumer import ShardConsumer
from reconciler.core.leases import SHARD_END
from reconciler.core.outcomes import Outcome
from reconciler.core.records import StreamRecord, Undecodable
from reconciler.errors import ExpiredIteratorError
from reconciler.ports import RecordsPage, Shard
from reconciler.processing import Origin
from reconciler.settings import Settings
from reconciler.testing import FakeLeaseStore, FakeStreamSource, eventually, stream_record

LABELS = {"table": "transcripts", "shard": "shardId-1"}
BACKOFF = fast_settings(idle_poll_seconds=1, max_idle_poll_seconds=4, retry_backoff_seconds=30)


def _consumer(
    world: World, source: FakeStreamSource, shard: Shard, checkpoints: FakeLeaseStore, settings: Settings
) -> ShardConsumer:
    return consumer_for(world, source, shard, checkpoints, settings)


def _removal(world: World, n: int) -> dict[str, object]:
    world.add_transcript("acct-1", f"tr-{n}")
    return stream_record(n, old_image=world.image("acct-1", f"tr-{n}"), identity="botocore")


def _record_sleeps(consumer: ShardConsumer, source: FakeStreamSource, stop_after: int) -> list[float]:
    """Replace waiting with a note of how long the consumer asked to wait; stop it after ``stop_after``
    waits. A record is appended at the third wait, so that the backoff is seen to reset."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        if len(asked) == 3:
            source.append("shardId-1", stream_record(10, event="INSERT", old_image={"transcript_id": "x"}))
        if len(asked) >= stop_after:
            consumer.stop()
        await asyncio.sleep(0)

    consumer._sleep = sleep  # type: ignore[method-assign]
    return asked


async def test_empty_polls_back_off_doubling_up_to_the_cap_and_a_record_resets_the_backoff(
    world: World,
) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    consumer = _consumer(world, source, shard, checkpoints, BACKOFF)
    asked = _record_sleeps(consumer, source, stop_after=7)

    await asyncio.wait_for(consumer.run(), timeout=5)

    assert asked == [1, 2, 4, 1, 2, 4, 4]


async def test_a_consumer_is_active_from_the_moment_it_is_created(world: World) -> None:
    """The liveness probe may ask before the first poll."""
    source = FakeStreamSource()
    shard = source.add_shard("transcripts", "shardId-1")
    consumer = _consumer(world, source, shard, FakeLeaseStore(), BACKOFF)
    assert consumer.last_activity == world.clock.now
    assert not consumer.busy


async def test_a_shard_checkpointed_at_its_end_is_finished_without_reading(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    checkpoints.positions[(shard.stream_arn, shard.shard_id)] = SHARD_END

    await asyncio.wait_for(_consumer(world, source, shard, checkpoints, BACKOFF).run(), timeout=5)

    assert source.reads == 0


async def test_the_end_of_a_closed_shard_is_logged(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    source.append("shardId-1", _removal(world, 1))

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(_consumer(world, source, shard, checkpoints, BACKOFF).run(), timeout=5)

    assert [e["log_level"] for e in logs if e["event"] == "shard.ended"] == ["info"]


class _ExpiresOnce(FakeStreamSource):
    async def records(self, iterator: str, limit: int) -> RecordsPage:
        if self.reads == 0:
            self.reads += 1
            raise ExpiredIteratorError("iterator expired")
        return await super().records(iterator, limit)


async def test_an_expired_iterator_is_logged_and_replaced_from_the_checkpoint(world: World) -> None:
    source, checkpoints = _ExpiresOnce(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    source.append("shardId-1", _removal(world, 1))

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(_consumer(world, source, shard, checkpoints, BACKOFF).run(), timeout=5)

    assert [e["event"] for e in logs if e["event"].startswith("shard.iterator")] == ["shard.iterator_expired"]
    assert checkpoints.history == [f"{1:021d}", SHARD_END]


async def test_a_trimmed_gap_is_logged_and_counted_as_a_poll_failure(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    checkpoints.positions[(shard.stream_arn, shard.shard_id)] = f"{1:021d}"
    source.trimmed.add("shardId-1")
    source.append("shardId-1", _removal(world, 7))

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(_consumer(world, source, shard, checkpoints, BACKOFF).run(), timeout=5)

    trimmed = [e for e in logs if e["event"] == "shard.trimmed"]
    assert [(e["log_level"], e["checkpoint"]) for e in trimmed] == [("error", f"{1:021d}")]
    assert world.sample("reconciler_failures_total", stage="poll", error="TrimmedDataError") == 1


class _SlowPolls(FakeStreamSource):
    """Each poll takes a minute of the test clock; notes the last-poll time the consumer had set before it."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.last_polls: list[float | None] = []

    async def records(self, iterator: str, limit: int) -> RecordsPage:
        self.last_polls.append(
            self.world.registry.get_sample_value("reconciler_last_successful_poll_timestamp_seconds", LABELS)
        )
        self.world.clock.advance(60)
        return await super().records(iterator, limit)


async def test_each_successful_poll_is_time_stamped_for_its_shard(world: World) -> None:
    source = _SlowPolls(world)
    shard = source.add_shard("transcripts", "shardId-1")
    started = world.clock.now.timestamp()
    consumer = _consumer(world, source, shard, FakeLeaseStore(), fast_settings())
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: len(source.last_polls) >= 3)
    finally:
        consumer.stop()
        await task

    assert source.last_polls[:3] == [started, started + 60, started + 120]


async def test_a_crashing_record_is_logged_with_its_sequence_number(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    source.append("shardId-1", _removal(world, 1))
    consumer = _consumer(world, source, shard, checkpoints, BACKOFF)

    async def crash(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        consumer.stop()
        raise RuntimeError("a bug")

    world.processor.process = crash  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(consumer.run(), timeout=5)

    crashed = [e for e in logs if e["event"] == "record.crashed"]
    assert [(e["log_level"], e["sequence_number"]) for e in crashed] == [("error", f"{1:021d}")]
    assert checkpoints.history == []
    # The crash is the record's own outcome (left for redelivery), not a crash of the shard's poll loop.
    assert world.sample("reconciler_failures_total", stage="process", error="RuntimeError") == 1
    assert not [e for e in logs if e["event"] == "shard.crashed"]
