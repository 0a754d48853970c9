"""What a shard consumer tells the worker and the operator: busy while working, fresh after each chunk, quiet
when nothing went wrong, loud about a record it cannot place."""

from __future__ import annotations

import asyncio
import datetime as dt

import structlog.testing
from conftest import World, closed_shard, consumer_for, fast_settings

from reconciler.consumer import ShardConsumer
from reconciler.core.outcomes import Ignored, Outcome
from reconciler.core.records import StreamRecord, Undecodable
from reconciler.errors import TransientError
from reconciler.ports import Shard
from reconciler.processing import Origin
from reconciler.testing import FakeLeaseStore, FakeStreamSource, stream_record

IN_PAIRS = fast_settings(batch_size=10, concurrency=2)


def _consumer(world: World, source: FakeStreamSource, shard: Shard) -> ShardConsumer:
    """A consumer of ``shard`` that processes two records at a time."""
    return consumer_for(world, source, shard, FakeLeaseStore(), IN_PAIRS)


def _failures(world: World) -> float:
    return sum(
        sample.value
        for metric in world.registry.collect()
        if metric.name == "reconciler_failures"
        for sample in metric.samples
        if sample.name == "reconciler_failures_total"
    )


async def test_a_consumer_is_busy_while_it_processes_a_chunk_and_idle_after(world: World) -> None:
    """The worker's liveness probe does not count a long chunk as a hang, but does count an idle consumer."""
    source, shard = closed_shard(world, 3)
    consumer = _consumer(world, source, shard)
    seen: list[bool] = []
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        seen.append(consumer.busy)
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    await consumer.run()

    assert seen == [True, True, True]
    assert consumer.busy is False


async def test_a_consumer_is_fresh_right_after_a_slow_chunk(world: World) -> None:
    """Its last activity is when the chunk finished, not when the poll that brought it began."""
    source, shard = closed_shard(world, 1)
    consumer = _consumer(world, source, shard)
    real = world.processor.process

    async def slow(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        world.clock.advance(600)
        return await real(origin, record)

    world.processor.process = slow  # type: ignore[method-assign]
    started = world.clock.now
    await consumer.run()

    assert consumer.last_activity == started + dt.timedelta(seconds=600)


async def test_a_clean_closed_shard_is_read_once_without_failures(world: World) -> None:
    source, shard = closed_shard(world, 5)
    consumer = _consumer(world, source, shard)

    await asyncio.wait_for(consumer.run(), timeout=5)

    assert consumer.finished
    assert source.reads == 1
    assert _failures(world) == 0


async def test_an_unplaceable_record_is_logged_with_its_reason_and_position(world: World) -> None:
    source, shard = closed_shard(world, 2)
    broken = stream_record(3)
    broken["dynamodb"]["SequenceNumber"] = "not-a-number"  # type: ignore[index]
    source.append("shardId-1", broken)
    consumer = _consumer(world, source, shard)
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        consumer.stop()  # one pass over the batch is enough
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        await consumer.run()

    (event,) = [e for e in logs if e["event"] == "record.unplaceable"]
    assert event["log_level"] == "error"
    assert event["after"] == 2  # the two records before it were decoded and handled
    assert "SequenceNumber" in event["reason"]


class _Unsteady(FakeStreamSource):
    """GetShardIterator is throttled once, then trips over a bug once, then works."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def iterator(self, shard: Shard, after: str | None) -> str:
        self.attempts += 1
        if self.attempts == 1:
            raise TransientError("GetShardIterator: throttled")
        if self.attempts == 2:
            raise RuntimeError("a bug")
        return await super().iterator(shard, after)


async def test_poll_errors_are_logged_counted_and_backed_off_and_the_shard_context_is_bound(
    world: World,
) -> None:
    source = _Unsteady()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    source.append("shardId-1", stream_record(1, event="INSERT", old_image={"transcript_id": "tr-1"}))
    consumer = _consumer(world, source, shard)
    waits: list[float] = []
    bound: list[dict[str, object]] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        bound.append(structlog.contextvars.get_contextvars())
        return Ignored(record.sequence_number)

    consumer._sleep = sleep  # type: ignore[method-assign]
    world.processor.process = process  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(consumer.run(), timeout=5)

    backoff = IN_PAIRS.retry_backoff_seconds
    assert waits == [backoff, 2 * backoff]  # this shard backs off exponentially, alone
    assert bound == [{"table": "transcripts", "shard": "shardId-1"}]
    assert [(e["event"], e["log_level"], e.get("error_type"), e.get("error")) for e in logs] == [
        ("shard.error", "warning", "TransientError", "GetShardIterator: throttled"),
        ("shard.crashed", "error", "RuntimeError", None),
        ("shard.ended", "info", None, None),
        ("shard.stopped", "info", None, None),
    ]
    assert logs[-1]["finished"] is True
    for error in ("TransientError", "RuntimeError"):
        assert world.sample("reconciler_failures_total", stage="poll", error=error) == 1


async def test_a_finished_shard_leaves_no_series_behind(world: World) -> None:
    """Closed shards come and go: their per-shard gauges are dropped when their consumer returns."""
    source, shard = closed_shard(world, 1)
    await asyncio.wait_for(_consumer(world, source, shard).run(), timeout=5)
    labels = {"table": "transcripts", "shard": "shardId-1"}
    for name in ("reconciler_iterator_age_seconds", "reconciler_last_successful_poll_timestamp_seconds"):
        assert world.registry.get_sample_value(name, labels) is None
    assert world.sample("reconciler_shards_consuming", table="transcripts") == 0
