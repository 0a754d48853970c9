"""Scheduled sweeps inside the worker, on the in-memory fakes with a clock moved by hand: a job runs when due
and not before, one replica at a time and once per interval across replicas, a crashed holder's lease is taken
after it expires, a ``trimmed`` letter makes the orphan sweep run early (and once more a minimum age later), a
failing run never stops the worker, SIGTERM stops a run, and shadow mode's orphan sweep deletes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Sequence

import pytest
from conftest import World, fast_settings
from structlog.testing import capture_logs

from reconciler.core.reverse import KeyType, KeyTypes
from reconciler.orphans import OrphanSweep, orphan_job
from reconciler.ports import DeadLetter, DeleteReport, ObjectVersion, SweepPosition
from reconciler.schedule import JOB_SHARD, Job, Scheduler, job_arn
from reconciler.settings import Settings
from reconciler.testing import (
    FakeArtifactStore,
    FakeLeaseStore,
    FakeStreamSource,
    FakeSweepPositions,
    eventually,
    stream_record,
)
from reconciler.worker import Collaborators, Worker

INTERVAL = 3600.0
KEY = (job_arn("orphans"), JOB_SHARD)
KEY_TYPES: KeyTypes = {
    "transcripts": {"transcript_id": KeyType.STRING},
    "speech_outputs": {"transcript_id": KeyType.STRING, "output_type": KeyType.STRING},
    "llm_requests": {"request_id": KeyType.STRING},
}


class _Monotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Sched:
    world: World
    leases: FakeLeaseStore
    positions: FakeSweepPositions
    settings: Settings
    monotonic: _Monotonic
    runs: list[str] = dataclasses.field(default_factory=list)

    def scheduler(self, owner: str = "a", job: Job | None = None) -> Scheduler:
        return Scheduler(
            [job or self.job()],
            self.leases,
            self.positions,
            self.world.metrics,
            self.settings,
            owner,
            self.world.clock,
            self.monotonic,
        )

    def job(self, **overrides: object) -> Job:
        async def run(_: asyncio.Event) -> None:
            self.runs.append("run")

        fields: dict[str, object] = {"name": "orphans", "interval": INTERVAL, "run": run} | overrides
        return Job(**fields)  # type: ignore[arg-type]

    def runs_of(self, outcome: str) -> float:
        return self.world.sample("reconciler_scheduled_runs_total", job="orphans", outcome=outcome)


@pytest.fixture
def sched(world: World) -> Sched:
    leases = FakeLeaseStore()
    return Sched(world, leases, FakeSweepPositions(leases), fast_settings(), _Monotonic())


def _trimmed(at: dt.datetime) -> DeadLetter:
    arn = "arn:aws:dynamodb:us-east-1:1:table/transcripts/stream/x"
    return DeadLetter("transcripts", arn, "shardId-1", "0", "", "trimmed", "expired unread", at)


async def test_a_scheduled_sweep_runs_when_due_and_not_before(sched: Sched) -> None:
    scheduler = sched.scheduler()
    assert await scheduler.run_due(asyncio.Event()) == ["orphans"]  # never ran: due at once
    sched.world.clock.advance(INTERVAL - 1)
    assert await scheduler.run_due(asyncio.Event()) == []
    sched.world.clock.advance(1)
    assert await scheduler.run_due(asyncio.Event()) == ["orphans"]
    assert len(sched.runs) == 2
    assert sched.runs_of("succeeded") == 2
    last = sched.world.sample("reconciler_scheduled_last_run_timestamp_seconds", job="orphans")
    assert last == sched.world.clock.now.timestamp()
    assert sched.leases.rows[KEY].owner is None  # released after each run


async def test_two_replicas_never_run_a_sweep_at_once_and_together_run_it_once_per_interval(
    sched: Sched,
) -> None:
    running, most = 0, 0
    go = asyncio.Event()

    async def counted(*, wait: bool) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await go.wait() if wait else await asyncio.sleep(0)
        finally:
            running -= 1

    async def slow(_: asyncio.Event) -> None:
        await counted(wait=True)

    async def quick(_: asyncio.Event) -> None:
        await counted(wait=False)

    a, b = sched.scheduler("a", sched.job(run=slow)), sched.scheduler("b", sched.job(run=quick))
    first = asyncio.create_task(a.run_due(asyncio.Event()))
    try:
        await eventually(lambda: running == 1)
        assert await b.run_due(asyncio.Event()) == []  # held by a
        assert sched.leases.rows[KEY].owner == "a"
    finally:
        go.set()
    assert await asyncio.wait_for(first, timeout=5) == ["orphans"]
    assert await b.run_due(asyncio.Event()) == []  # a's run is stored: not due for b either
    ran = []
    for _ in range(3):
        sched.world.clock.advance(INTERVAL)
        both = await asyncio.gather(a.run_due(asyncio.Event()), b.run_due(asyncio.Event()))
        ran.append(sum(len(names) for names in both))
    assert ran == [1, 1, 1]
    assert most == 1


async def test_a_crashed_holders_sweep_lease_is_taken_after_it_expires(sched: Sched) -> None:
    sched.leases.grant(*KEY, "orphans", owner="crashed")  # took the lease, then stopped renewing it
    scheduler = sched.scheduler("b")
    assert await scheduler.run_due(asyncio.Event()) == []
    sched.monotonic.now += sched.settings.lease_seconds - 0.01
    assert await scheduler.run_due(asyncio.Event()) == []  # not yet expired as b saw it
    sched.monotonic.now += 0.01
    assert await scheduler.run_due(asyncio.Event()) == ["orphans"]


async def test_a_trimmed_gap_makes_the_sweep_run_early_and_once_more_a_minimum_age_later(
    sched: Sched,
) -> None:
    scheduler = sched.scheduler(job=sched.job(after_gaps=True, settle=1000.0, spacing=60.0))
    assert await scheduler.run_due(asyncio.Event()) == ["orphans"]
    sched.world.clock.advance(60)
    assert await scheduler.run_due(asyncio.Event()) == []
    scheduler.gap(sched.world.clock.now)
    assert await scheduler.run_due(asyncio.Event()) == ["orphans"]  # early: an interval has not passed
    sched.world.clock.advance(60)
    scheduler.gap(sched.world.clock.now - dt.timedelta(seconds=60))  # the same letter, seen again
    assert await scheduler.run_due(asyncio.Event()) == []  # the run after it covered it
    sched.world.clock.advance(1000)
    assert await scheduler.run_due(asyncio.Event()) == ["orphans"]  # the gap's uploads are old enough now
    sched.world.clock.advance(60)
    assert await scheduler.run_due(asyncio.Event()) == []
    assert len(sched.runs) == 3


async def test_a_pending_trimmed_letter_makes_the_workers_orphan_sweep_run_early(sched: Sched) -> None:
    now = sched.world.clock.now.timestamp()
    sched.positions.stored[KEY] = SweepPosition(1, 0, None, now - 600, started_at=now - 700)  # ran lately
    await sched.world.dead_letters.put(_trimmed(sched.world.clock.now))
    job = sched.job(after_gaps=True, settle=86400.0)
    worker = _worker(sched, job, dead_letter_count_seconds=0.01)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: len(sched.runs) == 1)
        await asyncio.sleep(0.1)  # counted again and again: the letter asks once, and is satisfied
        assert len(sched.runs) == 1
        assert sched.positions.stored[KEY].started_at == now
    finally:
        worker.handle_exit()
        await asyncio.wait_for(task, timeout=5)


async def test_a_failing_sweep_is_counted_tried_at_the_next_due_time_and_never_stops_the_worker(
    sched: Sched,
) -> None:
    async def failing(_: asyncio.Event) -> None:
        sched.runs.append("failed")
        raise RuntimeError("a bug in the job")

    source = FakeStreamSource()
    source.add_shard("transcripts", "shardId-1")
    worker = _worker(sched, sched.job(run=failing), source=source)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: sched.runs_of("failed") == 1)
        sched.world.add_transcript("acct-1", "tr-1")
        source.append("shardId-1", stream_record(1, old_image=sched.world.image("acct-1", "tr-1")))
        await eventually(lambda: sched.world.held_by("acct-1", "tr-1") == 0)  # still consuming
        assert worker.liveness()[0]
        assert sched.runs == ["failed"]  # not tried again in a loop: at the next due time
        failures = {"stage": "schedule", "error": "RuntimeError"}
        assert sched.world.registry.get_sample_value("reconciler_failures_total", failures) == 1
    finally:
        worker.handle_exit()
        await asyncio.wait_for(task, timeout=5)
    sched.world.clock.advance(INTERVAL)
    assert await sched.scheduler().run_due(asyncio.Event()) == ["orphans"]


async def test_sigterm_stops_a_sweep_run_which_records_nothing(sched: Sched) -> None:
    started = asyncio.Event()

    async def waits(stopping: asyncio.Event) -> None:
        started.set()
        await stopping.wait()  # a job checks between batches; this one has nothing else to do

    worker = _worker(sched, sched.job(run=waits))
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), timeout=5)
    finally:
        worker.handle_exit()
    await asyncio.wait_for(task, timeout=5)
    assert sched.runs_of("stopped") == 1
    assert KEY not in sched.positions.stored  # the next replica runs it again
    assert sched.leases.rows[KEY].owner is None


async def test_shadow_modes_orphan_sweep_lists_orphans_and_deletes_nothing(sched: Sched) -> None:
    world = sched.world
    old = world.clock.now - dt.timedelta(days=3)
    world.artifacts.put("stt-uploads", "acct-1/gone/audio.wav", modified=old)  # its item is gone
    before = list(world.artifacts.buckets["stt-uploads"])

    async def build() -> OrphanSweep:
        day = dt.timedelta(days=1)
        return OrphanSweep(
            world.rules, KEY_TYPES, world.artifacts, world.items, world.metrics, world.clock, day
        )

    job = orphan_job(fast_settings(dry_run=True), build)
    with capture_logs() as logs:
        assert await sched.scheduler(job=job).run_due(asyncio.Event()) == ["orphans"]
    assert world.artifacts.buckets["stt-uploads"] == before
    found = [e for e in logs if e["event"] == "orphans.found"]
    assert [(e["key"], e["dry_run"]) for e in found] == [("acct-1/gone/audio.wav", True)]
    assert sched.runs_of("succeeded") == 1


def _worker(sched: Sched, job: Job, source: FakeStreamSource | None = None, **settings: object) -> Worker:
    if source is None:
        source = FakeStreamSource()
        source.add_shard("transcripts", "shardId-1")
    parts = Collaborators(
        source,
        sched.leases,
        sched.world.processor,
        sched.world.metrics,
        dead_letters=sched.world.dead_letters,
        scheduler=sched.scheduler(job=job),
    )
    return Worker(fast_settings(**settings), sched.world.rules, parts, clock=sched.world.clock)


async def test_an_orphan_sweep_stops_between_batches_once_stopping_is_set(world: World) -> None:
    artifacts = FakeArtifactStore(page_size=1)
    old = world.clock.now - dt.timedelta(days=3)
    for n in range(4):
        artifacts.put("stt-uploads", f"acct-1/gone-{n}/audio.wav", modified=old)
    stopping = asyncio.Event()
    delete = artifacts.delete_versions

    async def deleting(bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        stopping.set()  # SIGTERM while the first batch is deleted: it finishes, no other starts
        return await delete(bucket, versions)

    artifacts.delete_versions = deleting  # type: ignore[method-assign]
    day = dt.timedelta(days=1)
    sweep = OrphanSweep(world.rules, KEY_TYPES, artifacts, world.items, world.metrics, world.clock, day)
    report = await sweep.sweep(dry_run=False, stopping=stopping)
    assert (report.stopped, report.deleted) == (True, 1)
    assert len(artifacts.keys("stt-uploads")) == 3
