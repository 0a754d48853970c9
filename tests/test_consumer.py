"""A shard consumer checkpoints only finished work, redelivers the rest, and ends closed shards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from conftest import World, consumer_for, fast_settings
from structlog.testing import capture_logs

from reconciler.consumer import ShardConsumer
from reconciler.core.leases import SHARD_END, Lease
from reconciler.core.outcomes import Outcome
from reconciler.core.records import StreamRecord, Undecodable
from reconciler.errors import TransientError
from reconciler.ports import Shard
from reconciler.processing import Origin
from reconciler.settings import Settings
from reconciler.testing import FakeLeaseStore, FakeStreamSource, eventually, stream_record

FAST = fast_settings(batch_size=3)


def _consumer(
    world: World,
    source: FakeStreamSource,
    shard: Shard,
    checkpoints: FakeLeaseStore,
    settings: Settings = FAST,
) -> ShardConsumer:
    return consumer_for(world, source, shard, checkpoints, settings)


async def _run_until(consumer: ShardConsumer, condition: Callable[[], bool]) -> None:
    """Run ``consumer`` until ``condition`` holds, then stop it and wait for it to return."""
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(condition)
    finally:
        consumer.stop()
        await task


def _at(checkpoints: FakeLeaseStore, shard: Shard, sequence: int) -> Callable[[], bool]:
    return lambda: checkpoints.positions.get((shard.stream_arn, shard.shard_id)) == f"{sequence:021d}"


def _removal(world: World, seq: int, transcript: str) -> dict[str, object]:
    world.add_transcript("acct-1", transcript)
    return stream_record(seq, old_image=world.image("acct-1", transcript), identity="botocore")


async def test_records_are_deleted_and_the_checkpoint_follows(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    for n in range(1, 8):
        source.append("shardId-1", _removal(world, n, f"tr-{n}"))
    consumer = _consumer(world, source, shard, checkpoints)
    await _run_until(consumer, _at(checkpoints, shard, 7))

    assert all(world.held_by("acct-1", f"tr-{n}") == 0 for n in range(1, 8))
    assert checkpoints.history[-1] == f"{7:021d}"
    assert checkpoints.history == sorted(checkpoints.history)


async def test_the_checkpoint_never_passes_a_pending_record_and_it_is_redelivered(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    source.append("shardId-1", stream_record(1, event="INSERT", old_image={"transcript_id": "x"}))
    source.append("shardId-1", _removal(world, 2, "tr-2"))
    source.append("shardId-1", stream_record(3, event="INSERT", old_image={"transcript_id": "y"}))
    world.items.fail_deletes = True  # the linked items of tr-2 cannot be deleted for now
    consumer = _consumer(world, source, shard, checkpoints)
    task = asyncio.create_task(consumer.run())

    await eventually(lambda: source.reads >= 4)
    assert checkpoints.positions[(shard.stream_arn, "shardId-1")] == f"{1:021d}"
    assert world.sample("reconciler_record_outcomes_total", table="transcripts", outcome="retry") >= 2

    world.items.fail_deletes = False
    await eventually(_at(checkpoints, shard, 3))
    consumer.stop()
    await task
    assert world.held_by("acct-1", "tr-2") == 0


async def test_a_restarted_consumer_resumes_after_its_checkpoint(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    for n in range(1, 4):
        source.append("shardId-1", _removal(world, n, f"tr-{n}"))
    first = _consumer(world, source, shard, checkpoints)
    await _run_until(first, _at(checkpoints, shard, 3))

    source.append("shardId-1", _removal(world, 4, "tr-4"))
    second = _consumer(world, source, shard, checkpoints)
    await _run_until(second, _at(checkpoints, shard, 4))

    removals = world.sample(
        "reconciler_stream_records_total", table="transcripts", event="REMOVE", cause="ttl"
    )
    assert removals == 4  # records 1-3 were not read again
    assert world.held_by("acct-1", "tr-4") == 0


async def test_a_closed_shard_read_to_its_end_is_checkpointed_as_shard_end(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    source.append("shardId-1", _removal(world, 1, "tr-1"))
    consumer = _consumer(world, source, shard, checkpoints)

    await asyncio.wait_for(consumer.run(), timeout=5)

    assert consumer.finished
    assert checkpoints.history == [f"{1:021d}", SHARD_END]


@pytest.mark.parametrize("stop_during", ["idle", "backoff"])
async def test_stop_returns_promptly(world: World, stop_during: str) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    if stop_during == "backoff":
        world.items.fail_deletes = True
        source.append("shardId-1", _removal(world, 1, "tr-1"))
    slow = fast_settings(idle_poll_seconds=30, max_idle_poll_seconds=30, retry_backoff_seconds=30)
    consumer = _consumer(world, source, shard, checkpoints, slow)
    task = asyncio.create_task(consumer.run())
    await eventually(lambda: source.reads >= 1)
    await asyncio.sleep(0.05)  # now waiting out a 30 s idle poll or backoff
    consumer.stop()
    await asyncio.wait_for(task, timeout=1)
    assert world.sample("reconciler_shards_consuming", table="transcripts") == 0


async def test_an_unexpected_error_backs_off_and_redelivers_instead_of_crashing(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    source.append("shardId-1", _removal(world, 1, "tr-1"))
    real = world.processor.process
    calls = 0

    async def flaky(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return await real(origin, record)

    world.processor.process = flaky  # type: ignore[method-assign]
    consumer = _consumer(world, source, shard, checkpoints)
    await _run_until(consumer, _at(checkpoints, shard, 1))
    assert world.sample("reconciler_failures_total", stage="process", error="RuntimeError") == 1
    assert world.held_by("acct-1", "tr-1") == 0


async def test_a_slow_record_holds_the_checkpoint_but_not_the_records_after_it(world: World) -> None:
    """Pipeline, not chunks: while record 2 is stuck, records 3-6 are deleted (the window is 5 wide), the
    checkpoint waits at 1, and it jumps to 6 the moment record 2 finishes."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    for n in range(1, 7):
        source.append("shardId-1", _removal(world, n, f"tr-{n}"))
    release = asyncio.Event()
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        if record.sequence == 2:
            await release.wait()
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    consumer = _consumer(world, source, shard, checkpoints, fast_settings(concurrency=5))
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: all(world.held_by("acct-1", f"tr-{n}") == 0 for n in (1, 3, 4, 5, 6)))
        assert world.held_by("acct-1", "tr-2") > 0
        assert checkpoints.positions[shard.stream_arn, shard.shard_id] == f"{1:021d}"
        release.set()
        await eventually(_at(checkpoints, shard, 6))
    finally:
        release.set()  # a failing assertion must not leave the slow record (and the test) hanging
        consumer.stop()
        await task
    assert f"{2:021d}" not in checkpoints.history[: checkpoints.history.index(f"{1:021d}") + 1]


async def test_a_record_that_cannot_be_placed_stops_the_shard_there_without_skipping_it(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    source.append("shardId-1", _removal(world, 1, "tr-1"))
    broken = _removal(world, 2, "tr-2")
    broken["dynamodb"]["SequenceNumber"] = "not-a-number"  # type: ignore[index]
    source.append("shardId-1", broken)
    source.append("shardId-1", _removal(world, 3, "tr-3"))
    consumer = _consumer(world, source, shard, checkpoints)
    slept: list[float] = []
    real_sleep = consumer._sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(seconds)

    consumer._sleep = sleep  # type: ignore[method-assign]
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(
            lambda: world.sample("reconciler_failures_total", stage="decode", error="DecodeError") >= 3
        )
    finally:
        consumer.stop()
        await task
    assert checkpoints.positions[(shard.stream_arn, "shardId-1")] == f"{1:021d}"
    assert world.held_by("acct-1", "tr-3") > 0  # nothing after the unplaceable record was touched
    base = FAST.retry_backoff_seconds  # re-read after a doubling wait, not every few seconds for a day
    assert [s for s in slept if s >= base][:2] == [base, base * 2]


async def test_a_trimmed_gap_is_dead_lettered_and_reading_resumes_at_the_trim_horizon(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    checkpoints.positions[(shard.stream_arn, "shardId-1")] = f"{1:021d}"
    source.trimmed.add("shardId-1")
    source.append("shardId-1", _removal(world, 7, "tr-7"))  # the oldest record still held
    consumer = _consumer(world, source, shard, checkpoints)
    await _run_until(consumer, lambda: checkpoints.positions[(shard.stream_arn, "shardId-1")] == f"{7:021d}")
    (letter,) = world.dead_letters.letters.values()
    assert (letter.kind, letter.sequence_number) == ("trimmed", f"{1:021d}")
    assert world.held_by("acct-1", "tr-7") == 0


async def test_a_shard_whose_first_poll_never_succeeds_still_ages(world: World) -> None:
    """Its poll age counts from the consumer's start, so the stall alert sees it."""

    class Unreachable(FakeStreamSource):
        async def iterator(self, shard: Shard, after: str | None) -> str:
            raise TransientError("GetShardIterator: throttled")

    source, checkpoints = Unreachable(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    consumer = _consumer(world, source, shard, checkpoints)
    started = world.clock.now.timestamp()
    task = asyncio.create_task(consumer.run())
    await eventually(
        lambda: world.sample("reconciler_failures_total", stage="poll", error="TransientError") >= 1
    )
    labels = {"table": "transcripts", "shard": "shardId-1"}
    assert world.sample("reconciler_last_successful_poll_timestamp_seconds", **labels) == started
    consumer.stop()
    await task


async def test_an_expired_iterator_resumes_after_the_last_record_read_without_reading_twice(
    world: World,
) -> None:
    """Records already in the window are not read (nor deleted) again: while record 1 holds the checkpoint
    back, the fresh iterator starts after the last record handed out, not at the checkpoint."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    for n in range(1, 11):
        source.append("shardId-1", _removal(world, n, f"tr-{n}"))
    seen: list[int] = []
    release = asyncio.Event()
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        seen.append(record.sequence)
        if record.sequence == 2:
            source.expire["shardId-1"] = 1  # the next read finds its iterator expired
        if 6 in seen:
            release.set()
        if record.sequence == 1:
            await release.wait()
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    consumer = _consumer(world, source, shard, checkpoints, fast_settings(batch_size=2))
    await asyncio.wait_for(consumer.run(), timeout=5)
    assert consumer.finished
    assert source.expire["shardId-1"] == 0  # the expiry did happen
    assert sorted(seen) == list(range(1, 11))


async def test_a_throttled_shard_backs_off_on_its_own_and_then_reads_on(world: World) -> None:
    """LimitExceeded (more than two readers of a shard) backs this shard off, doubling each time."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    source.append("shardId-1", _removal(world, 1, "tr-1"))
    source.throttle["shardId-1"] = 3
    consumer = _consumer(world, source, shard, checkpoints)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    consumer._sleep = sleep  # type: ignore[method-assign]
    await asyncio.wait_for(consumer.run(), timeout=5)
    backoff = fast_settings().retry_backoff_seconds
    assert waits[:3] == [backoff, 2 * backoff, 4 * backoff]
    assert consumer.finished
    assert world.held_by("acct-1", "tr-1") == 0
    assert world.sample("reconciler_failures_total", stage="poll", error="TransientError") == 3


async def test_the_next_page_is_fetched_while_the_current_one_is_worked_on_and_no_further(
    world: World,
) -> None:
    """Prefetch, bounded: with the window (2) full and stuck, the page waiting for a slot and one page read
    ahead of it are all that is held: reading stays one page ahead, whatever the backlog."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    for n in range(1, 7):
        source.append("shardId-1", _removal(world, n, f"tr-{n}"))
    release = asyncio.Event()
    started: list[int] = []
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        started.append(record.sequence)
        await release.wait()
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    consumer = _consumer(world, source, shard, checkpoints, fast_settings(batch_size=1, concurrency=2))
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: started == [1, 2], seconds=2)
        await asyncio.sleep(0.05)  # room to read further, if it would
        # Pages 1 and 2 are in the window, page 3 waits for a slot and page 4 has been read, ready; page 5
        # is not asked for until page 4 is taken.
        assert source.reads == 4
        release.set()
        await eventually(_at(checkpoints, shard, 6))
    finally:
        release.set()
        consumer.stop()
        await task


def _insert(sequence: int) -> dict[str, object]:
    return stream_record(sequence, event="INSERT", old_image={"transcript_id": f"tr-{sequence}"})


@pytest.mark.parametrize("tight", ["per-shard", "worker-wide"])
@pytest.mark.parametrize("finishes", ["at-once", "after-yielding"])
async def test_a_stop_while_records_wait_for_a_slot_never_ends_the_shard(
    world: World, tight: str, finishes: str
) -> None:
    """A closed shard's last page, stopped while its second record waits for a slot (whether the slot frees
    with the stop or after it): the records never admitted stay unread, and no SHARD_END frees the children
    over them."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    for n in range(1, 4):
        source.append("shardId-1", _insert(n))
    one = fast_settings(concurrency=1 if tight == "per-shard" else 10)
    slots = asyncio.Semaphore(1 if tight == "worker-wide" else 10)
    consumer = consumer_for(world, source, shard, checkpoints, one, slots)
    processed: list[str] = []
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        processed.append(record.sequence_number)
        consumer.stop()  # SIGTERM arrives while the first record is worked on
        if finishes == "after-yielding":  # long enough for every later record to try for a slot
            for _ in range(100):
                await asyncio.sleep(0)
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    await asyncio.wait_for(consumer.run(), timeout=5)

    assert processed == [f"{1:021d}"]
    assert not consumer.finished
    assert SHARD_END not in checkpoints.history
    assert checkpoints.history == [f"{1:021d}"]


async def test_a_lost_lease_abandons_the_records_in_flight_and_writes_no_checkpoint_after_it(
    world: World,
) -> None:
    """``lose()`` (a lease unrenewable for a lease period: the table would still accept this worker's
    write) stops the shard before the next checkpoint, even one already earned; it is counted and logged
    once, and the consumer returns normally while the abandoned record unwinds."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    for n in range(1, 4):
        source.append("shardId-1", _insert(n))
    rarely = fast_settings(checkpoint_seconds=60)  # the first move is written at once, the next in 60 s
    consumer = _consumer(world, source, shard, checkpoints, rarely)
    second, never = asyncio.Event(), asyncio.Event()
    real = world.processor.process

    gates = {f"{2:021d}": second, f"{3:021d}": never}

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        gate = gates.get(record.sequence_number)
        try:
            if gate is not None:
                await gate.wait()
        except asyncio.CancelledError:
            for _ in range(20):  # an AWS call closing its connection: cancellation takes a while
                await asyncio.sleep(0)
            raise
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    task = asyncio.create_task(consumer.run())
    await eventually(lambda: checkpoints.history == [f"{1:021d}"])
    second.set()
    in_flight = {"table": "transcripts"}
    await eventually(lambda: world.sample("reconciler_records_in_flight", **in_flight) == 1)  # only the third
    with capture_logs() as logs:
        consumer.lose()
        consumer.lose()
    await asyncio.wait_for(task, timeout=5)

    assert consumer.lost is True
    assert checkpoints.history == [f"{1:021d}"]  # record 2 finished, but its checkpoint is never written
    assert world.sample("reconciler_records_in_flight", **in_flight) == 0
    labels = {"table": "transcripts", "transition": "lost"}
    assert world.sample("reconciler_lease_transitions_total", **labels) == 1
    assert logs == [
        {"event": "lease.lost", "table": "transcripts", "shard": "shardId-1", "log_level": "warning"}
    ]


async def test_an_ended_shard_is_counted_and_its_last_checkpoint_logged_as_shard_end(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    source.append("shardId-1", _insert(1))
    consumer = _consumer(world, source, shard, checkpoints)
    with capture_logs() as logs:
        await asyncio.wait_for(consumer.run(), timeout=5)

    assert consumer.finished
    assert world.sample("reconciler_shards_ended_total", table="transcripts") == 1
    [stopped] = [entry for entry in logs if entry["event"] == "shard.stopped"]
    assert (stopped["finished"], stopped["lost"], stopped["checkpoint"]) == (True, False, SHARD_END)


async def test_a_shard_stopped_while_waiting_for_a_worker_wide_slot_leaves_the_slot_to_the_others(
    world: World,
) -> None:
    """Two shards share one worker-wide slot; the one waiting for it is stopped (its lease moved away):
    the slot must go back to the shard still reading, not to the stopped one's abandoned wait."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    busy, stopped = source.add_shard("transcripts", "busy"), source.add_shard("transcripts", "stopped")
    for n in (1, 2, 3):
        source.append("busy", _insert(n))
    source.append("stopped", _insert(4))
    shared = asyncio.Semaphore(1)

    def consumer(shard: Shard) -> ShardConsumer:
        return consumer_for(world, source, shard, checkpoints, FAST, shared)

    gate = asyncio.Event()
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        if record.sequence_number == f"{1:021d}":
            await gate.wait()
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    reading, waiting = consumer(busy), consumer(stopped)
    reading_task = asyncio.create_task(reading.run())
    await eventually(lambda: reading.busy)
    waiting_task = asyncio.create_task(waiting.run())
    await eventually(lambda: source.reads_by_shard.get("stopped", 0) >= 1)
    for _ in range(10):  # its record reaches the full semaphore
        await asyncio.sleep(0)
    waiting.stop()
    await asyncio.wait_for(waiting_task, timeout=5)
    gate.set()
    try:
        await eventually(_at(checkpoints, busy, 3), seconds=2)
    finally:
        reading.stop()
        await asyncio.wait_for(reading_task, timeout=5)
    assert checkpoints.positions.get((stopped.stream_arn, "stopped")) is None


class FailingCheckpoints(FakeLeaseStore):
    """A lease table whose next ``failures`` checkpoint writes are throttled."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def checkpoint(self, lease: Lease, position: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise TransientError("AWS call failed after retries: ThrottlingException")
        await super().checkpoint(lease, position)


async def test_a_restarted_consumer_with_nothing_new_writes_no_checkpoint(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    source.append("shardId-1", _insert(5))
    checkpoints.positions[shard.stream_arn, "shardId-1"] = f"{5:021d}"
    consumer = _consumer(world, source, shard, checkpoints)
    await _run_until(consumer, lambda: source.reads >= 2)
    assert checkpoints.history == []


async def test_a_failed_checkpoint_is_counted_logged_and_written_at_the_next_attempt(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FailingCheckpoints(failures=1)
    shard = source.add_shard("transcripts", "shardId-1")
    source.append("shardId-1", _insert(1))
    consumer = _consumer(world, source, shard, checkpoints)
    with capture_logs() as logs:
        await _run_until(consumer, _at(checkpoints, shard, 1))
    assert world.sample("reconciler_failures_total", stage="checkpoint", error="TransientError") == 1
    [failed] = [entry for entry in logs if entry["event"] == "checkpoint.failed"]
    assert failed["error_type"] == "TransientError"
    assert failed["error"] == "AWS call failed after retries: ThrottlingException"


async def test_a_last_checkpoint_that_fails_at_stop_is_counted_and_logged(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FailingCheckpoints(failures=0)
    shard = source.add_shard("transcripts", "shardId-1")
    for n in (1, 2):
        source.append("shardId-1", _insert(n))
    rarely = fast_settings(checkpoint_seconds=60)  # the first move is written at once, the next in 60 s
    consumer = _consumer(world, source, shard, checkpoints, rarely)
    second = asyncio.Event()
    real = world.processor.process

    async def process(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        if record.sequence_number == f"{2:021d}":
            await second.wait()
        return await real(origin, record)

    world.processor.process = process  # type: ignore[method-assign]
    task = asyncio.create_task(consumer.run())
    await eventually(lambda: checkpoints.history == [f"{1:021d}"])
    second.set()
    await eventually(lambda: not consumer.busy)
    checkpoints.failures = 1
    with capture_logs() as logs:
        consumer.stop()
        await asyncio.wait_for(task, timeout=5)
    assert checkpoints.history == [f"{1:021d}"]  # the next reader redoes record 2
    assert world.sample("reconciler_failures_total", stage="checkpoint", error="TransientError") == 1
    failed = [(e["error"], e["error_type"]) for e in logs if e["event"] == "checkpoint.failed"]
    assert failed == [("AWS call failed after retries: ThrottlingException", "TransientError")]


async def test_a_throttled_shard_doubles_its_backoff_and_logs_it(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    source.append("shardId-1", _insert(1))
    source.throttle["shardId-1"] = 3
    consumer = _consumer(world, source, shard, checkpoints)
    with capture_logs() as logs:
        await _run_until(consumer, _at(checkpoints, shard, 1))
    errors = [entry for entry in logs if entry["event"] == "shard.error"]
    base = FAST.retry_backoff_seconds
    assert [entry["backoff"] for entry in errors] == [base, base * 2, base * 4]
    assert {entry["error_type"] for entry in errors} == {"TransientError"}


async def test_a_crashing_shard_doubles_its_backoff_too(world: World) -> None:
    """A bug (not a ReconcilerError) backs the shard off like a throttle: 1, 2, 4 times the base."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    source.append("shardId-1", _insert(1))
    crashes = [RuntimeError("a bug")] * 3
    real_iterator = source.iterator

    async def iterator(shard: Shard, after: str | None) -> str:
        if crashes:
            raise crashes.pop()
        return await real_iterator(shard, after)

    source.iterator = iterator  # type: ignore[method-assign]
    consumer = _consumer(world, source, shard, checkpoints)
    slept: list[float] = []
    real_sleep = consumer._sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(seconds)

    consumer._sleep = sleep  # type: ignore[method-assign]
    with capture_logs() as logs:  # captured, not rendered: three tracebacks would be slow to print
        await _run_until(consumer, _at(checkpoints, shard, 1))
    assert [e["error_type"] for e in logs if e["event"] == "shard.crashed"] == ["RuntimeError"] * 3
    base = FAST.retry_backoff_seconds
    assert slept[:3] == [base, base * 2, base * 4]
