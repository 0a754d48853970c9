"""The iterator age says how far behind a shard's reader is, and drops to zero once it has caught up."""

from __future__ import annotations

import asyncio
import datetime as dt

from conftest import World, consumer_for, fast_settings

from reconciler.consumer import ShardConsumer
from reconciler.ports import RecordsPage, Shard
from reconciler.settings import Settings
from reconciler.testing import FakeLeaseStore, FakeStreamSource, eventually, stream_record

LABELS = {"table": "transcripts", "shard": "shardId-1"}


class AgeRecordingSource(FakeStreamSource):
    """Notes the iterator age each time the consumer polls, before the poll's records are handled."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.ages: list[float | None] = []

    async def records(self, iterator: str, limit: int) -> RecordsPage:
        self.ages.append(self.world.registry.get_sample_value("reconciler_iterator_age_seconds", LABELS))
        return await super().records(iterator, limit)


def _consumer(world: World, source: FakeStreamSource, shard: Shard, settings: Settings) -> ShardConsumer:
    return consumer_for(world, source, shard, FakeLeaseStore(), settings)


async def test_the_iterator_age_resets_to_zero_when_a_poll_comes_back_empty(world: World) -> None:
    source = AgeRecordingSource(world)
    shard = source.add_shard("transcripts", "shardId-1")
    an_hour_ago = world.clock.now - dt.timedelta(hours=1)
    world.add_transcript("acct-1", "tr-1")
    source.append(
        "shardId-1",
        stream_record(
            1, old_image=world.image("acct-1", "tr-1"), created_at=an_hour_ago, identity="botocore"
        ),
    )
    consumer = _consumer(world, source, shard, fast_settings())
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: len(source.ages) >= 3)  # the record's poll, then two empty ones
    finally:
        consumer.stop()
        await task

    # Before the first poll nothing is known; after it the reader was an hour behind; then it caught up.
    assert source.ages[:3] == [None, 3600.0, 0.0]


async def test_a_record_stamped_after_the_local_clock_has_age_zero(world: World) -> None:
    """Clock skew between AWS and the worker never shows as a negative or made-up age."""
    source = AgeRecordingSource(world)
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    world.add_transcript("acct-1", "tr-1")
    ahead = world.clock.now + dt.timedelta(seconds=30)
    source.append(
        "shardId-1",
        stream_record(1, old_image=world.image("acct-1", "tr-1"), created_at=ahead, identity="botocore"),
    )
    source.append("shardId-1", stream_record(2, event="INSERT", old_image={"transcript_id": "tr-2"}))

    await _consumer(world, source, shard, fast_settings(batch_size=1)).run()

    assert source.ages == [None, 0.0]  # one poll per record: the second sees the first one's age
