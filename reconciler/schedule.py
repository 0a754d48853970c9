"""Scheduled jobs inside the worker: each named job runs every ``interval`` seconds across all replicas
together, one replica at a time.

A job is a lease row (``#sweep/<name>``, ``schedule``) in the lease table, claimed as a sweep segment is
(``reconciler.claims``): taken when free or expired and the job due, renewed while it runs, released after.
The last run is stored under the row (a ``SweepPosition``: ``started_at``, ``finished_at``), so the interval
is kept across replicas and restarts. A job is due when:

- it never ran, or an interval has passed since its last attempt ended (a failed attempt counts: it is tried
  again at the next due time, never in a loop);
- or a run was requested at a time after its last finished run had started (a ``trimmed`` gap: the worker
  requests a run at the letter's time, and one more ``settle`` seconds later), and ``spacing`` seconds have
  passed since its last attempt.

A run stops (between batches, if the job checks its event) on SIGTERM or when its lease is lost; a stopped
run records nothing, so the next replica runs it again. A failing run is logged and counted; it never stops
the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from reconciler.claims import Claims, Holding
from reconciler.core.leases import Lease
from reconciler.errors import LeaseLostError, ReconcilerError
from reconciler.observability.metrics import Metrics
from reconciler.ports import LeaseStore, SweepPosition, SweepPositions
from reconciler.settings import Settings
from reconciler.waiting import wait_any

log = structlog.get_logger("reconciler.schedule")

JOB_SHARD = "schedule"
SPACING_SECONDS = 300.0
Clock = Callable[[], dt.datetime]
Run = Callable[[asyncio.Event], Awaitable[object]]
"""One run of a job; it should return soon after the event is set (SIGTERM, or its lease lost)."""


def job_arn(name: str) -> str:
    """The lease table's partition of a scheduled job (never a real stream ARN)."""
    return f"#sweep/{name}"


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    interval: float
    run: Run
    after_gaps: bool = False
    """Run at once after a ``trimmed`` gap (``Scheduler.gap``), and again ``settle`` seconds later."""
    settle: float = 0.0
    spacing: float = SPACING_SECONDS
    """Least wait between the end of one attempt and a requested run (never more than ``interval``)."""


class Scheduler:
    def __init__(  # noqa: PLR0917 - the scheduler's collaborators
        self,
        jobs: Sequence[Job],
        leases: LeaseStore,
        positions: SweepPositions,
        metrics: Metrics,
        settings: Settings,
        owner: str,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = {job.name: job for job in jobs}
        self._positions = positions
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._claims = Claims(leases, settings, owner, monotonic)
        self._requests: dict[str, set[float]] = {name: set() for name in self.jobs}
        self._wake = asyncio.Event()
        for name in self.jobs:
            metrics.initialize_job(name)

    def request(self, name: str, at: dt.datetime) -> None:
        """Ask for a run of ``name`` that starts at or after ``at`` (kept in memory: callers ask again)."""
        self._requests[name].add(at.timestamp())
        self._wake.set()

    def gap(self, at: dt.datetime) -> None:
        """A ``trimmed`` gap was recorded at ``at``: the jobs that cover gaps run now and ``settle`` later."""
        for job in self.jobs.values():
            if job.after_gaps:
                self.request(job.name, at)
                self.request(job.name, at + dt.timedelta(seconds=job.settle))

    async def run(self, stopping: asyncio.Event) -> None:
        """Look at every job each heartbeat (or at once on a request) until ``stopping`` is set."""
        log.info("schedule.started", jobs=sorted(self.jobs))
        while not stopping.is_set():
            self._wake.clear()
            await self.run_due(stopping)
            await wait_any(stopping, self._wake, seconds=self._settings.heartbeat_seconds)

    async def run_due(self, stopping: asyncio.Event) -> list[str]:
        """One look at every job: run those due and free, one after another; the names of those run."""
        ran = []
        for job in self.jobs.values():
            if stopping.is_set():
                break
            try:
                if await self._claimed(job, stopping):
                    ran.append(job.name)
            except ReconcilerError as exc:  # the lease table: the next look tries again
                self._metrics.failures.labels("schedule", type(exc).__name__).inc()
                log.warning("schedule.claim_failed", job=job.name, error=str(exc))
            except Exception as exc:  # a bug here must not stop the worker either: the next look tries again
                self._metrics.failures.labels("schedule", type(exc).__name__).inc()
                log.exception("schedule.crashed", job=job.name, error_type=type(exc).__name__)
        return ran

    async def _claimed(self, job: Job, stopping: asyncio.Event) -> bool:
        last: list[SweepPosition | None] = [None]

        async def due(row: Lease) -> bool:
            last[0] = await self._positions.load(row)
            return self._due(job, last[0])

        stub = Lease(job_arn(job.name), JOB_SHARD, job.name)
        async with self._claims.claim(stub, due) as holding:
            if holding is None:
                return False
            await self._run(job, holding, last[0], stopping)
            return True

    def _due(self, job: Job, last: SweepPosition | None) -> bool:
        if last is None or last.finished_at is None:
            return True
        now = self._clock().timestamp()
        if now >= last.finished_at + job.interval:
            return True
        covered = last.started_at if last.started_at is not None else float("-inf")
        self._requests[job.name] = requests = {at for at in self._requests[job.name] if at > covered}
        spaced = now >= last.finished_at + min(job.spacing, job.interval)
        return spaced and any(at <= now for at in requests)

    async def _run(
        self, job: Job, holding: Holding, last: SweepPosition | None, stopping: asyncio.Event
    ) -> None:
        halt = asyncio.Event()
        watch = asyncio.create_task(_set_on(halt, stopping, holding))
        started = self._clock().timestamp()
        log.info("schedule.run_started", job=job.name)
        outcome = "succeeded"
        try:
            await job.run(halt)
        except Exception as exc:  # a job's failure, even a bug, must not stop the worker: tried when due
            outcome = "failed"
            self._metrics.failures.labels("schedule", type(exc).__name__).inc()
            log.warning("schedule.run_failed", job=job.name, error_type=type(exc).__name__, exc_info=True)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if halt.is_set() and outcome == "succeeded":
            outcome = "lease_lost" if holding.lost else "stopped"
        if outcome in {"succeeded", "failed"}:
            outcome = await self._record(job, holding, last, started, outcome)
        self._metrics.scheduled_runs.labels(job.name, outcome).inc()
        log.info("schedule.run_finished", job=job.name, outcome=outcome)

    async def _record(
        self, job: Job, holding: Holding, last: SweepPosition | None, started: float, outcome: str
    ) -> str:
        """Store the attempt under the held lease; a success covers what was asked before it began."""
        now = self._clock().timestamp()
        covered = started if outcome == "succeeded" else (last.started_at if last is not None else None)
        position = SweepPosition((last.number if last else 0) + 1, 0, None, now, covered)
        try:
            await self._positions.save(holding.lease, position)
        except LeaseLostError:
            return "lease_lost"
        except ReconcilerError as exc:  # not stored: the job is due again and runs once more
            self._metrics.failures.labels("schedule", type(exc).__name__).inc()
            log.warning("schedule.record_failed", job=job.name, error=str(exc))
        if outcome == "succeeded":
            self._metrics.scheduled_last_run.labels(job.name).set(now)
        return outcome


async def _set_on(halt: asyncio.Event, stopping: asyncio.Event, holding: Holding) -> None:
    """Set ``halt`` once the worker stops or the lease is lost."""
    await wait_any(stopping, holding.lost_event)
    halt.set()
