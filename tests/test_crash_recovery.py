"""Crash recovery: the worker as a process (``python -m reconciler run``), SIGKILLed at seeded random instants
while it deletes the nested artifacts of 510 removed transcripts of the demo layout, with live ones beside
them. Right after every kill, before any restart, the independent checker (tests/invariants.py) reads the
lease table, the stream and the artifacts with its own clients: no checkpoint may stand at or past a removal
whose artifacts remain without a dead letter naming it. At the end a worker finishes and the full check
runs: every version, delete marker and linked item of every removed transcript gone, every live one
byte-identical (same versions, ETags and sizes; same items), every removal deleted or dead-lettered.

The kills land in the busy window, whatever the machine's speed: a worker process takes a second or more to
import and start (measured, and shown when a test fails), so a kill waits until the workers have completed a
seeded random number of deletions since the previous one, then a seeded random fraction of a second more.
The checker proves they cut real work short: removals just after the checkpoint still had artifacts, some of
them half deleted, and the checkpoint moved on between kills. With two replicas, the one not killed is
frozen mid-work (SIGSTOP) while the checker reads, and resumed after.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import worker_env
from invariants import Checker, Report, Snapshot, Tracked, tracked_transcript

from reconciler.demo.layout import Layout
from reconciler.demo.moto_server import BackendSeeder, at_scale, ttl_delete
from reconciler.demo.run import Population, populate

pytestmark = pytest.mark.integration

DEMO_RULES = Path(__file__).parent.parent / "reconciler" / "demo" / "rules.toml"
TRANSCRIPTS = 612  # 510 removed (TTL, expired, customer requests), of which one tampered
LIVE = 24  # of the 102 live ones populate makes, the first (the tampered one's target) included
KILLS = 20
PAIR_KILLS = 10  # the two-replica variant: each kill costs a restart and a check; one worker takes the 20
JITTER = 0.25  # seconds, after that many deletions
PATIENCE = 60.0  # for any one thing a worker process must do: a broken path fails instead of hanging


@dataclass
class Scene:
    """The layout on moto, seeded and removed, with the checker and the state before the removals."""

    endpoint: str
    layout: Layout
    population: Population
    live: list[Tracked]
    deleted: list[Tracked]
    checker: Checker
    before: Snapshot
    last_removal: str


@dataclass
class Life:
    """One worker process, from its start to its kill; its JSON log events collected as they come."""

    name: str
    process: asyncio.subprocess.Process
    spawned: float = field(default_factory=time.monotonic)
    events: list[dict[str, object]] = field(default_factory=list)
    seen: dict[str, float] = field(default_factory=dict)  # first time each event was read

    def __post_init__(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                self.events.append(event)
                self.seen.setdefault(str(event["event"]), time.monotonic())

    @property
    def deleted(self) -> int:
        """Records whose deletion completed here and deleted something."""
        return sum(
            e["event"] == "deletion.completed" and any(e.get(n) for n in ("versions", "markers", "items"))
            for e in self.events
        )

    @property
    def startup(self) -> float | None:
        """Seconds from spawn to work: reading a shard, or started (a standby replica)."""
        started = self.seen.get("shard.started", self.seen.get("worker.started"))
        return None if started is None else started - self.spawned

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self._reader

    async def term(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout=PATIENCE)
        await self._reader
        return code


@dataclass
class Kill:
    """What the checker saw right after one kill."""

    life: str
    startup: float | None  # spawn to work (None: killed before it got there)
    report: Report
    seconds: float  # the check's own time


@pytest.fixture
async def scene(endpoint: str, layout: Layout) -> AsyncIterator[Scene]:
    with at_scale():  # moto's listings and queries cost what they answer, not the whole bucket or table
        population = populate(TRANSCRIPTS, dt.datetime.now(dt.UTC), seed=11)
        live = population.live[:LIVE]
        await layout.add([*population.deleted, *live], seed=BackendSeeder())
        deleted = [tracked_transcript(t) for t in population.deleted]
        kept = [tracked_transcript(t) for t in live]
        checker = Checker(endpoint, [*deleted, *kept], lookahead=24)  # the 16 in flight, and more
        before = await asyncio.to_thread(checker.snapshot, kept)
        for t in population.ttl:  # through DynamoDB, so that each removal is a stream record
            ttl_delete("transcripts", {"transcript_id": {"S": t.transcript_id}})
        for t in [*population.expired, *population.requested]:
            await layout.dynamodb.delete_item(
                TableName="transcripts", Key={"transcript_id": {"S": t.transcript_id}}
            )
        removals = await asyncio.to_thread(checker.removals)
        assert len(removals) == len(deleted) >= 500
        yield Scene(
            endpoint, layout, population, kept, deleted, checker, before, removals[-1].sequence_number
        )


@pytest.fixture
async def lives(scene: Scene) -> AsyncIterator[list[Life]]:
    """Every worker process started; any still running at the end is killed."""
    started: list[Life] = []
    yield started
    for life in started:
        await life.kill()


async def _start(scene: Scene, lives: list[Life], name: str) -> Life:
    env = worker_env(
        scene.endpoint,
        worker_id=name,  # a restarted replica takes the leases in its name back at once
        lease_seconds="1",
        heartbeat_seconds="0.2",
        discovery_seconds="0.5",
        checkpoint_seconds="0",
        idle_poll_seconds="0.05",
        max_idle_poll_seconds="0.2",
        retry_backoff_seconds="0.2",
        concurrency="16",  # the records a kill leaves unfinished, read again by the next process
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", "run", "--config", str(DEMO_RULES),
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    life = Life(name, process)
    lives.append(life)
    return life


@dataclass
class Crashes:
    """Kills at seeded random instants in the busy window, each followed at once by the checkpoint check."""

    scene: Scene
    lives: list[Life]
    rng: random.Random
    between: tuple[int, int]  # deletions, by all processes together, from one kill to the next
    kills: list[Kill] = field(default_factory=list)

    @property
    def deletions(self) -> int:
        return sum(life.deleted for life in self.lives)

    async def kill(self, victim: Life) -> None:
        """Kill ``victim`` once the workers completed a random number of deletions more, a random fraction
        of a second later; then check at once (in a thread: the event loop keeps reading the other processes'
        logs, or their pipes would fill and stall them)."""
        target = self.deletions + self.rng.randint(*self.between)
        try:
            async with asyncio.timeout(PATIENCE):
                while self.deletions < target:  # noqa: ASYNC110 - other processes' logs
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"no progress to {target} deletions in {PATIENCE:.0f} s\n{self}") from None
        await asyncio.sleep(self.rng.uniform(0, JITTER))
        await victim.kill()
        started = time.monotonic()
        # The other replicas freeze where they are (mid-work, like the kill) while the checker reads: moto
        # serves them and the checker from one core, and they would finish the work before the next kill.
        others = [life for life in self.lives if life.process.returncode is None]
        for life in others:
            life.process.send_signal(signal.SIGSTOP)
        try:
            report = await asyncio.to_thread(self.scene.checker.checkpoints)
        finally:
            for life in others:
                life.process.send_signal(signal.SIGCONT)
        report.assert_ok()
        self.kills.append(Kill(victim.name, victim.startup, report, time.monotonic() - started))

    def assert_cut_work_short(self, kills: int = KILLS) -> None:
        """Not a trivial pass: the kills found removals just after the checkpoint still holding artifacts,
        some half deleted, and the checkpoint moved on between kills."""
        interrupted = [k for k in self.kills if k.report.in_flight]
        halfway = [k for k in self.kills if k.report.partial]
        assert len(self.kills) >= kills, str(self)
        assert len(interrupted) >= kills // 2, str(self)
        assert len(halfway) >= kills // 4, str(self)
        assert self.kills[-1].report.covered > self.kills[0].report.covered, str(self)

    def __str__(self) -> str:
        kills = [
            f"  kill of {k.life}: started in {k.startup or 0:.2f} s, checked in {k.seconds:.2f} s,"
            f" {k.report.covered} removals checkpointed, {len(k.report.in_flight)} unfinished after it,"
            f" {len(k.report.partial)} half deleted"
            for k in self.kills
        ]
        lives = [
            f"  {life.name}: exit {life.process.returncode}, {life.deleted} deletions, {life.events[-1:]}"
            for life in self.lives[-3:]
        ]
        return "\n".join(["kills:", *kills, "last processes:", *lives])


async def _finish(scene: Scene, life: Life) -> Report:
    """Wait until the checkpoint passed the last removal, stop the worker gracefully, run the full check."""
    async with asyncio.timeout(4 * PATIENCE):
        while not await _checkpointed(scene):  # noqa: ASYNC110 - another process's progress
            await asyncio.sleep(0.2)
    assert await life.term() == 0
    deleted = scene.deleted
    return await asyncio.to_thread(scene.checker.full, deleted, scene.live, scene.before)


async def _checkpointed(scene: Scene) -> bool:
    rows = (await scene.layout.dynamodb.scan(TableName="reconciler-checkpoints"))["Items"]
    done = [
        row["checkpoint"]["S"] for row in rows if row.get("source_table", {}).get("S") and "checkpoint" in row
    ]
    return any(int(c) >= int(scene.last_removal) for c in done if c.isdigit())


async def test_crash_sigkilled_twenty_times_the_worker_never_checkpoints_ahead_and_finishes_everything(
    scene: Scene, lives: list[Life]
) -> None:
    # 20 kills within the first 400 of 510 deletions at most: the last process always has work left.
    crashes = Crashes(scene, lives, random.Random(20251124), between=(1, 20))  # noqa: S311 - not crypto
    for _ in range(KILLS):
        await crashes.kill(await _start(scene, lives, "solo"))
    report = await _finish(scene, await _start(scene, lives, "solo"))
    report.assert_ok()
    assert report.covered == report.removals == len(scene.deleted)
    assert report.lettered >= 1  # the tampered transcript's refused audio_url
    crashes.assert_cut_work_short()


async def test_crash_two_replicas_killed_at_random_one_at_a_time_never_checkpoint_ahead(
    scene: Scene, lives: list[Life]
) -> None:
    """Two replicas; each round kills one of them at random (the shard's reader or its standby), checks with
    the other one frozen mid-work (SIGSTOP, then SIGCONT), and restarts the killed one. Fewer deletions
    between kills than with one worker: the survivor goes on deleting while the killed one restarts."""
    rng = random.Random(20251125)  # noqa: S311 - seeded instants, not crypto
    crashes = Crashes(scene, lives, rng, between=(1, 6))
    running = {name: await _start(scene, lives, name) for name in ("a", "b")}
    for _ in range(PAIR_KILLS):
        name = rng.choice(sorted(running))
        await crashes.kill(running[name])
        running[name] = await _start(scene, lives, name)
    await running["b"].term()
    report = await _finish(scene, running["a"])
    report.assert_ok()
    assert report.covered == report.removals == len(scene.deleted)
    crashes.assert_cut_work_short(PAIR_KILLS)
