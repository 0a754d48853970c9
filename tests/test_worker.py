"""The supervisor starts shards in lineage order, serves its probes and shuts down in two phases."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import urllib.request
from asyncio import Task
from collections.abc import AsyncIterator, Mapping

import pytest
import structlog
from conftest import World, fast_settings

from reconciler.core.dynamodb_json import Image
from reconciler.core.leases import SHARD_END
from reconciler.core.plan import LinkQuery
from reconciler.core.records import StreamViewType
from reconciler.core.spec import RuleSet
from reconciler.errors import ConfigError
from reconciler.ports import StreamInfo
from reconciler.testing import FakeLeaseStore, FakeStreamSource, eventually, stream_record
from reconciler.worker import Collaborators, Worker

SETTINGS = fast_settings()


def _worker(world: World, source: FakeStreamSource, checkpoints: FakeLeaseStore) -> Worker:
    parts = Collaborators(source, checkpoints, world.processor, world.metrics)
    return Worker(SETTINGS, world.rules, parts, clock=world.clock)


@contextlib.asynccontextmanager
async def _one_shard_worker(
    world: World, source: FakeStreamSource
) -> AsyncIterator[tuple[Worker, Task[None]]]:
    """A worker on one empty shard, ready; stopped gracefully on exit."""
    source.add_shard("transcripts", "shardId-1")
    worker = _worker(world, source, FakeLeaseStore())
    task = asyncio.create_task(worker.run())
    await eventually(lambda: worker.readiness()[0])
    try:
        yield worker, task
    finally:
        if worker.readiness() != (False, "shutting down"):
            worker.handle_exit()
        await asyncio.wait_for(task, timeout=5)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_children_start_only_after_their_parent_is_read_to_its_end(world: World) -> None:
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    parent = source.add_shard("transcripts", "shardId-parent", closed=True)
    child = source.add_shard("transcripts", "shardId-child", parent="shardId-parent")
    world.add_transcript("acct-1", "tr-1")
    world.add_transcript("acct-1", "tr-2")
    source.append("shardId-parent", stream_record(1, old_image=world.image("acct-1", "tr-1")))
    source.append("shardId-child", stream_record(2, old_image=world.image("acct-1", "tr-2")))
    release = asyncio.Event()
    real = world.items.delete_linked

    async def held(query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        await release.wait()  # the parent's record cannot finish until released
        return await real(query, key)

    world.items.delete_linked = held  # type: ignore[method-assign]
    worker = _worker(world, source, checkpoints)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: source.reads_by_shard.get("shardId-parent", 0) >= 1)
    await asyncio.sleep(0.2)
    assert source.reads_by_shard.get("shardId-child", 0) == 0  # not started while the parent is unfinished

    release.set()
    await eventually(lambda: checkpoints.positions.get((child.stream_arn, "shardId-child")) == f"{2:021d}")
    assert checkpoints.positions[(parent.stream_arn, "shardId-parent")] == SHARD_END
    assert checkpoints.history.index(SHARD_END) < checkpoints.history.index(f"{2:021d}")
    worker.handle_exit()
    await asyncio.wait_for(task, timeout=5)


async def test_probes_answer_on_the_http_port_and_readiness_drops_on_shutdown(world: World) -> None:
    async with _one_shard_worker(world, FakeStreamSource()) as (worker, _):
        assert worker.http is not None
        port = worker.http.port
        assert port is not None

        assert await asyncio.to_thread(_get, port, "/healthz") == (200, "ok\n")
        status, body = await asyncio.to_thread(_get, port, "/readyz")
        assert (status, body) == (200, "consuming 1 shards\n")
        status, body = await asyncio.to_thread(_get, port, "/metrics")
        assert status == 200
        assert 'reconciler_shards_consuming{table="transcripts"} 1.0' in body

        worker.handle_exit()
        assert worker.readiness() == (False, "shutting down")


async def test_liveness_fails_when_a_consumer_goes_silent(world: World) -> None:
    async with _one_shard_worker(world, FakeStreamSource()) as (worker, _):
        (consumer,) = worker._consumers.values()
        consumer.last_activity = world.clock.now - dt.timedelta(seconds=SETTINGS.liveness_seconds + 1)
        assert worker.liveness() == (False, "shard shardId-1 silent for 301s")
        in_flight: asyncio.Task[None] = asyncio.create_task(asyncio.sleep(3600))
        consumer._tasks.add(in_flight)  # a record in flight: its calls have timeouts of their own
        assert worker.liveness() == (True, "ok")
        consumer._tasks.discard(in_flight)
        in_flight.cancel()
        world.clock.advance(SETTINGS.liveness_seconds + 1)  # and the supervisor itself stalls
        assert worker.liveness() == (False, "supervisor heartbeat is stale")


def _stuck_second_record(world: World, source: FakeStreamSource) -> asyncio.Event:
    """Two removals on one shard: the first finishes, the second's linked-item delete never returns. The
    event is set once the second is stuck."""
    source.add_shard("transcripts", "shardId-1")
    for seq, transcript in ((1, "tr-1"), (2, "tr-2")):
        world.add_transcript("acct-1", transcript)
        source.append("shardId-1", stream_record(seq, old_image=world.image("acct-1", transcript)))
    real = world.items.delete_linked
    hang, stuck_now = asyncio.Event(), asyncio.Event()

    async def stuck(query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        if query.value == "tr-2":
            stuck_now.set()
            await hang.wait()
        return await real(query, key)

    world.items.delete_linked = stuck  # type: ignore[method-assign]
    return stuck_now


async def _stuck_worker(
    world: World, grace: float
) -> tuple[Worker, Task[None], FakeStreamSource, FakeLeaseStore]:
    """A worker that has finished the first record and is stuck inside the second."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    stuck_now = _stuck_second_record(world, source)
    parts = Collaborators(source, checkpoints, world.processor, world.metrics)
    settings = fast_settings(concurrency=1, shutdown_grace_seconds=grace)
    worker = Worker(settings, world.rules, parts, clock=world.clock)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: checkpoints.positions.get((source.arn("transcripts"), "shardId-1")) is not None)
    await asyncio.wait_for(stuck_now.wait(), timeout=5)
    return worker, task, source, checkpoints


async def test_a_second_signal_cancels_a_drain_that_hangs(world: World) -> None:
    worker, task, source, checkpoints = await _stuck_worker(world, grace=30)
    await asyncio.sleep(0.05)

    worker.handle_exit()  # phase one: drain would wait for the stuck deletion
    await asyncio.sleep(0.05)
    assert not task.done()
    worker.handle_exit()  # phase two: cancel now
    await asyncio.wait_for(task, timeout=1)
    # The finished record was checkpointed; the one cut short was not, so it is delivered again.
    assert checkpoints.positions == {(source.arn("transcripts"), "shardId-1"): f"{1:021d}"}


async def test_a_drain_that_outlasts_the_grace_period_says_how_many_consumers_it_cancelled(
    world: World,
) -> None:
    worker, task, _, _ = await _stuck_worker(world, grace=0.2)
    with structlog.testing.capture_logs() as events:
        worker.handle_exit()
        await asyncio.wait_for(task, timeout=5)
    (timeout,) = [e for e in events if e["event"] == "worker.drain_timeout"]
    assert timeout["cancelled"] == 1


async def test_a_stream_without_old_images_is_a_config_error(world: World) -> None:
    source = FakeStreamSource(view_type=StreamViewType.KEYS_ONLY)
    source.add_shard("transcripts", "shardId-1")
    worker = _worker(world, source, FakeLeaseStore())
    with pytest.raises(ConfigError, match="OLD_IMAGE"):
        await asyncio.wait_for(worker.run(), timeout=5)


async def test_a_missing_source_table_is_reported_by_name_and_the_others_are_consumed(world: World) -> None:
    """Discovery of one source never blocks another: 'missing' is listed first and does not exist."""
    rules = RuleSet.of(
        world.rules.buckets,
        ("missing", "transcripts"),
        {**world.rules.tables, "missing": world.rules.tables["transcripts"]},
    )
    source, checkpoints = FakeStreamSource(missing={"missing"}), FakeLeaseStore()
    source.add_shard("transcripts", "shardId-1")
    world.add_transcript("acct-1", "tr-1")
    source.append("shardId-1", stream_record(1, old_image=world.image("acct-1", "tr-1")))
    parts = Collaborators(source, checkpoints, world.processor, world.metrics)
    world.metrics.initialize(rules)
    worker = Worker(SETTINGS, rules, parts, clock=world.clock)
    with structlog.testing.capture_logs() as events:
        task = asyncio.create_task(worker.run())
        await eventually(lambda: world.held_by("acct-1", "tr-1") == 0)
        ready, text = worker.readiness()
        worker.handle_exit()
        await asyncio.wait_for(task, timeout=5)

    assert not ready
    assert "source 'missing': AccessError: AWS refused the request: ResourceNotFoundException" in text
    assert "consuming 1 shards" in text
    assert world.sample("reconciler_source_up", table="missing") == 0
    assert world.sample("reconciler_source_up", table="transcripts") == 1
    assert world.sample("reconciler_failures_total", stage="discover", error="AccessError") >= 1
    assert any(e["event"] == "source.unavailable" and e["table"] == "missing" for e in events)


async def test_a_crash_while_discovering_one_source_is_logged_and_retried_not_fatal(world: World) -> None:
    source = FakeStreamSource()
    real = source.describe
    calls = 0

    async def flaky(table: str) -> StreamInfo:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return await real(table)

    source.describe = flaky  # type: ignore[method-assign]
    source.add_shard("transcripts", "shardId-1")
    worker = _worker(world, source, FakeLeaseStore())
    task = asyncio.create_task(worker.run())
    await eventually(
        lambda: world.sample("reconciler_failures_total", stage="discover", error="RuntimeError") == 1
    )
    assert worker.readiness() == (
        False,
        "source 'transcripts': RuntimeError: unexpected error; consuming 0 shards",
    )
    world.clock.advance(SETTINGS.discovery_seconds)  # the next discovery is due
    await eventually(lambda: worker.readiness() == (True, "consuming 1 shards"))
    assert not task.done()
    worker.handle_exit()
    await asyncio.wait_for(task, timeout=5)


async def test_a_stream_switched_off_while_running_does_not_stop_the_running_consumers(world: World) -> None:
    source = FakeStreamSource()
    async with _one_shard_worker(world, source) as (_, task):
        source.disabled = True
        world.clock.advance(SETTINGS.discovery_seconds)  # the next discovery is due
        await eventually(
            lambda: world.sample("reconciler_failures_total", stage="discover", error="ConfigError") >= 1
        )
        assert not task.done()
        assert world.sample("reconciler_shards_consuming", table="transcripts") == 1


async def test_a_later_source_without_old_images_stops_the_worker_at_start(world: World) -> None:
    """The first discovery pass judges every source: a mistake in the second is as fatal as in the first."""
    rules = RuleSet.of(
        world.rules.buckets,
        ("transcripts", "other"),
        {**world.rules.tables, "other": world.rules.tables["transcripts"]},
    )
    source = FakeStreamSource(view_types={"other": StreamViewType.KEYS_ONLY})
    source.add_shard("transcripts", "shardId-1")
    parts = Collaborators(source, FakeLeaseStore(), world.processor, world.metrics)
    worker = Worker(SETTINGS, rules, parts, clock=world.clock)
    with pytest.raises(ConfigError, match="'other' streams KEYS_ONLY"):
        await asyncio.wait_for(worker.run(), timeout=5)
