"""A checkpoint follows finished records only, and a stop never ends a shard that was not read to its end."""

from __future__ import annotations

from conftest import World, closed_shard, consumer_for, fast_settings

from reconciler.consumer import ShardConsumer
from reconciler.core.leases import SHARD_END
from reconciler.core.outcomes import Outcome
from reconciler.core.records import StreamRecord, Undecodable
from reconciler.ports import Shard
from reconciler.processing import Origin
from reconciler.testing import FakeLeaseStore, FakeStreamSource, stream_record

IN_PAIRS = fast_settings(batch_size=10, concurrency=2)  # one page per shard, two records in flight at a time


def _seq(n: int) -> str:
    return f"{n:021d}"


def _consumer(
    world: World, source: FakeStreamSource, shard: Shard, checkpoints: FakeLeaseStore
) -> ShardConsumer:
    return consumer_for(world, source, shard, checkpoints, IN_PAIRS)


def _stop_while_processing(world: World, consumer: ShardConsumer, sequence: int) -> None:
    """Ask ``consumer`` to stop (as SIGTERM does) while record ``sequence`` is being processed."""
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        if record.sequence == sequence:
            consumer.stop()
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]


def _gone(world: World, removals: int) -> list[bool]:
    return [world.held_by("acct-1", f"tr-{n}") == 0 for n in range(1, removals + 1)]


async def test_a_stop_mid_page_checkpoints_the_finished_records_and_leaves_a_closed_shard_open(
    world: World,
) -> None:
    """Stopped during record 2 of 5 (two in flight), a closed shard is checkpointed at 2, not SHARD_END,
    and 3-5 wait: nothing is admitted to the window after a stop."""
    source, shard = closed_shard(world, 5)
    checkpoints = FakeLeaseStore()
    consumer = _consumer(world, source, shard, checkpoints)
    _stop_while_processing(world, consumer, 2)

    await consumer.run()

    assert checkpoints.positions[shard.stream_arn, shard.shard_id] == _seq(2)
    assert checkpoints.history == sorted(checkpoints.history)
    assert not consumer.finished
    assert _gone(world, 5) == [True, True, False, False, False]


async def test_the_next_owner_of_a_stopped_shard_finishes_it(world: World) -> None:
    """After a stop mid-page, the next owner deletes the rest and only then ends the shard."""
    source, shard = closed_shard(world, 5)
    checkpoints = FakeLeaseStore()
    first = _consumer(world, source, shard, checkpoints)
    _stop_while_processing(world, first, 2)
    await first.run()

    second = _consumer(world, source, shard, checkpoints)
    await second.run()

    assert checkpoints.history[-2:] == [_seq(5), SHARD_END]
    assert checkpoints.history[:-1] == sorted(checkpoints.history[:-1])
    assert second.finished
    assert all(_gone(world, 5))


async def test_a_stop_after_the_last_record_was_admitted_still_ends_the_shard(world: World) -> None:
    """Every record of a closed shard is in flight when the stop comes and all finish: the shard was read
    to its end, so it is marked SHARD_END and its children may start."""
    source, shard = closed_shard(world, 4)
    checkpoints = FakeLeaseStore()
    consumer = consumer_for(world, source, shard, checkpoints, fast_settings(concurrency=10))
    _stop_while_processing(world, consumer, 3)

    await consumer.run()

    assert checkpoints.history[-2:] == [_seq(4), SHARD_END]
    assert consumer.finished


async def test_a_stop_before_an_unplaceable_record_does_not_end_the_shard(world: World) -> None:
    """The records before it are done, but the record that could not be placed is not: no SHARD_END."""
    source, shard = closed_shard(world, 2)
    broken = stream_record(3, old_image=world.image("acct-1", "tr-3"), identity="botocore")
    broken["dynamodb"]["SequenceNumber"] = "not-a-number"  # type: ignore[index]
    source.append("shardId-1", broken)
    checkpoints = FakeLeaseStore()
    consumer = _consumer(world, source, shard, checkpoints)
    _stop_while_processing(world, consumer, 1)

    await consumer.run()

    assert checkpoints.history[-1] == _seq(2)
    assert not consumer.finished
