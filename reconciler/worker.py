"""The supervisor: coordinate leases, run one consumer per leased shard, serve HTTP, shut down in two phases.

One ``asyncio.TaskGroup`` owns every task. Every heartbeat the ``Coordinator`` renews held leases (a lost
one stops its consumer), the shard-sync holder adds leases for new shards, and free, expired or surplus
leases are taken; a shard that ends wakes the loop so its children start at once. SIGTERM (first signal):
stop claiming work, let consumers finish and checkpoint what is in flight under ``shutdown_grace_seconds``,
cancel what is left, then release every lease so peers take the shards at their next heartbeat. A second
signal cancels at once. Work that was not checkpointed is delivered again to whoever reads the shard next.
Beside them, every ``dead_letter_count_seconds`` the pending dead letters are counted by kind for the gauge;
pending ``trimmed`` letters ask the scheduled jobs that cover gaps (the orphan sweep) to run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from reconciler.consumer import ShardConsumer
from reconciler.coordination import Coordinator
from reconciler.core.leases import Lease
from reconciler.core.spec import RuleSet
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.observability.http import HttpServer
from reconciler.observability.metrics import Metrics
from reconciler.ports import DeadLetterStore, LeaseStore, LetterKind, ReceiptStore, StreamSource
from reconciler.preflight import Preflight
from reconciler.processing import Origin, RecordProcessor
from reconciler.schedule import Scheduler
from reconciler.settings import Settings
from reconciler.sweeper import Sweeper
from reconciler.waiting import wait_any

log = structlog.get_logger("reconciler.worker")
SWEEPER = ("#sweep", "sweeper")  # the sweeper's task among the shard tasks
SCHEDULER = ("#sweep", "schedule")  # the scheduled jobs' task, drained as the sweeper's

SHADOW = "SHADOW MODE (dry run: nothing is deleted): "
"""Leads every /readyz answer of a dry run, so nobody mistakes it for the worker that deletes."""


@dataclass(frozen=True, slots=True)
class Collaborators:
    source: StreamSource
    leases: LeaseStore
    processor: RecordProcessor
    metrics: Metrics
    owner: str = "worker"
    dead_letters: DeadLetterStore | None = None
    """Counted for ``reconciler_dead_letters_pending`` when set."""
    preflight: Preflight | None = None
    """Checks (and table creation) before anything is consumed; None skips them."""
    receipts: ReceiptStore | None = None
    """Served on the HTTP port (``/deletions/{table}/{key}``); None serves none."""
    sweeper: Sweeper | None = None
    """Expiry enforcement, one more task; it stops with the consumers (between pages) and drains with them."""
    scheduler: Scheduler | None = None
    """Scheduled jobs (the orphan sweep), one more task; a run stops between batches and drains the same."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        rules: RuleSet,
        parts: Collaborators,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._settings = settings
        self._rules = rules
        self._parts = parts
        self._clock = clock
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._released = asyncio.Event()
        self.coordinator = Coordinator(
            settings=settings,
            rules=rules,
            source=parts.source,
            leases=parts.leases,
            metrics=parts.metrics,
            owner=parts.owner,
        )
        self._slots = asyncio.Semaphore(settings.max_records_in_flight)
        self._consumers: dict[tuple[str, str], ShardConsumer] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._heartbeat = clock()
        self._problems: dict[str, str] = dict.fromkeys(rules.sources, "not discovered yet")
        self._discovered_once = False
        self._checked = parts.preflight is None
        self._ended = 0
        self.http: HttpServer | None = None

    # -- signals ---------------------------------------------------------------------------------------
    def handle_exit(self, sig: int | None = None) -> None:
        """First call: graceful stop. Second call: cancel everything now. Tests call this directly."""
        if self._stopping.is_set():
            log.warning("worker.forced_exit", signal=sig)
            for task in self._tasks.values():
                task.cancel()
            return
        log.info("worker.stopping", signal=sig)
        self._stopping.set()
        for consumer in self._consumers.values():
            consumer.stop()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig)

    # -- probes ----------------------------------------------------------------------------------------
    def liveness(self) -> tuple[bool, str]:
        now = self._clock()
        if (now - self._heartbeat).total_seconds() > self._settings.liveness_seconds:
            return False, "supervisor heartbeat is stale"
        for consumer in self._consumers.values():
            silent = (now - consumer.last_activity).total_seconds()
            # A consumer inside a batch makes AWS calls, each bounded by timeouts: long work is not a hang.
            if not consumer.finished and not consumer.busy and silent > self._settings.liveness_seconds:
                return False, f"shard {consumer.shard.shard_id} silent for {silent:.0f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        ready, detail = self._readiness()
        return ready, SHADOW + detail if self._settings.dry_run else detail

    def _readiness(self) -> tuple[bool, str]:
        if self._stopping.is_set():
            return False, "shutting down"
        if not self._checked:
            return False, "pre-flight checks running"
        consuming = f"consuming {sum(not c.finished for c in self._consumers.values())} shards"
        if self._problems:
            problems = "; ".join(f"source {t!r}: {p}" for t, p in sorted(self._problems.items()))
            return False, f"{problems}; {consuming}"
        return True, consuming

    # -- main loop -------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until a signal; returns after the graceful shutdown."""
        self.http = await HttpServer(
            self._parts.metrics.registry,
            self._settings.http_host,
            self._settings.http_port,
            self.liveness,
            self.readiness,
            self._parts.receipts,
        ).start()
        log.info("worker.started", http_port=self.http.port, sources=list(self._rules.sources))
        if self._settings.dry_run:
            log.warning(
                "worker.shadow_mode",
                detail="dry run: reads and resolves every record, deletes nothing, writes no dead letter",
                lease_table=self._settings.lease_table,
            )
        try:
            if not await self._preflight():
                return  # stopped while AWS was still being waited for: nothing was claimed
            async with asyncio.TaskGroup() as group:
                group.create_task(self._renewals(), name="lease-heartbeat")
                if self._parts.sweeper is not None:  # drained, or cancelled by a second signal, as a shard is
                    task = group.create_task(self._parts.sweeper.run(self._stopping), name="sweeper")
                    self._tasks[SWEEPER] = task
                if self._parts.scheduler is not None:
                    task = group.create_task(self._parts.scheduler.run(self._stopping), name="scheduler")
                    self._tasks[SCHEDULER] = task
                if self._parts.dead_letters is not None:
                    group.create_task(self._count_letters(self._parts.dead_letters), name="dead-letter-count")
                await self._supervise(group)
                await self._drain()
                await self._release()
        except ExceptionGroup as group:
            config = group.subgroup(ConfigError)
            if config is None:
                raise
            raise config.exceptions[0] from group  # a deployment mistake, reported plainly
        finally:
            await self.http.close()
        log.info("worker.stopped", shards=len(self._consumers), ended=self._ended)

    async def _preflight(self) -> bool:
        preflight = self._parts.preflight
        if preflight is not None:

            def beat() -> None:
                self._heartbeat = self._clock()

            if not await preflight.run(self._stopping, beat):
                return False
        self._checked = True
        return True

    async def _supervise(self, group: asyncio.TaskGroup) -> None:
        next_discovery = time.monotonic()  # schedules run on the monotonic clock; ``clock`` stamps events
        while not self._stopping.is_set():
            self._heartbeat = self._clock()
            if time.monotonic() >= next_discovery:
                await self._discover()
                next_discovery = time.monotonic() + self._settings.discovery_seconds
            self._wake.clear()
            await self._coordinate(group)
            await wait_any(self._stopping, self._wake, seconds=self._settings.heartbeat_seconds)

    async def _discover(self) -> None:
        """Each source on its own: one missing table or broken stream never keeps the others unread."""
        for table in self._rules.sources:
            try:
                await self.coordinator.discover(table)
            except ConfigError as exc:
                if not self._discovered_once:
                    raise  # at start: a deployment mistake, reported plainly, whichever source it is
                # Later (a stream disabled to change its view type, say): keep draining what is running.
                self._source_down(table, exc)
                log.error("stream.unusable", table=table, error=str(exc))
            except ReconcilerError as exc:
                self._source_down(table, exc)
                log.error("source.unavailable", table=table, error=str(exc), error_type=type(exc).__name__)
            except Exception as exc:  # a bug while discovering one source must not stop the others
                self._source_down(table, exc)
                log.exception("source.discovery_crashed", table=table, error_type=type(exc).__name__)
            else:
                if self._problems.pop(table, None) is not None:
                    log.info("source.available", table=table)
                self._parts.metrics.source_up.labels(table).set(1)
        self._discovered_once = True
        await self._sync()

    async def _sync(self) -> None:
        """The shard-sync holder lists every discovered stream's shards and adds leases for new ones."""
        try:
            if not self.coordinator.leading:  # the heartbeat renews it once held
                await self.coordinator.lead()
            if not self.coordinator.leading:
                return
            for table in self._rules.sources:
                if table in self.coordinator.streams and table not in self._problems:
                    await self.coordinator.sync(table)
        except ReconcilerError as exc:
            self._parts.metrics.failures.labels("discover", type(exc).__name__).inc()
            log.warning("lineage.sync_failed", error=str(exc), error_type=type(exc).__name__)

    async def _renewals(self) -> None:
        """The heartbeat, on its own: renewals never wait behind discovery or balancing, and go on through
        the drain until the leases are released."""
        while not self._released.is_set():
            try:
                if self.coordinator.leading:
                    await self.coordinator.lead()
                for key in await self.coordinator.renew():
                    if (consumer := self._consumers.get(key)) is not None:
                        consumer.lose()
            except Exception as exc:  # noqa: BLE001 - the next heartbeat tries; a lease period on it is lost
                self._parts.metrics.failures.labels("lease", type(exc).__name__).inc()
                log.warning("lease.heartbeat_failed", error_type=type(exc).__name__)
            await wait_any(self._released, seconds=self._settings.heartbeat_seconds)

    async def _count_letters(self, store: DeadLetterStore) -> None:
        """The pending gauge, by kind, until the worker stops: one ``Select=COUNT`` Query per kind, which
        reads only pending letters. A failed count leaves the last values and is tried at the next period."""
        while not self._stopping.is_set():
            try:
                for kind in typing.get_args(LetterKind):
                    pending = await store.count_pending(kind)
                    self._parts.metrics.dead_letters_pending.labels(kind).set(pending)
                    if kind == "trimmed" and pending and self._parts.scheduler is not None:
                        await self._gaps(store, self._parts.scheduler)
            except Exception as exc:  # noqa: BLE001 - a count must never stop the worker; the next one tries
                self._parts.metrics.failures.labels("dead_letter_count", type(exc).__name__).inc()
                log.warning("dead_letter.count_failed", error_type=type(exc).__name__)
            await wait_any(self._stopping, seconds=self._settings.dead_letter_count_seconds)

    @staticmethod
    async def _gaps(store: DeadLetterStore, scheduler: Scheduler) -> None:
        """Every pending ``trimmed`` letter asks for a run that starts after it: durable, so every replica
        sees it, and a run already started after it satisfies it (the scheduler keeps when runs started)."""
        async for letter in store.list(kind="trimmed", status="pending"):
            scheduler.gap(letter.created_at)

    async def _coordinate(self, group: asyncio.TaskGroup) -> None:
        """Take what the share allows and start it."""
        try:
            for lease in await self.coordinator.balance():
                self._start(group, lease)
        except ReconcilerError as exc:
            self._parts.metrics.failures.labels("lease", type(exc).__name__).inc()
            log.warning("lease.pass_failed", error=str(exc), error_type=type(exc).__name__)
        except Exception as exc:  # a bug in one pass must not stop the worker: the next pass tries again
            self._parts.metrics.failures.labels("lease", type(exc).__name__).inc()
            log.exception("lease.pass_crashed", error_type=type(exc).__name__)

    def _source_down(self, table: str, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, ReconcilerError) else "unexpected error"
        self._problems[table] = f"{type(exc).__name__}: {message}"
        self._parts.metrics.source_up.labels(table).set(0)
        self._parts.metrics.failures.labels("discover", type(exc).__name__).inc()

    def _start(self, group: asyncio.TaskGroup, lease: Lease) -> None:
        if self._stopping.is_set():
            return  # a signal arrived while leases were being taken: they are released with the rest
        consumer = ShardConsumer(
            origin=Origin(lease.table, lease.stream_arn, lease.shard_id),
            lease=lease,
            source=self._parts.source,
            leases=self._parts.leases,
            processor=self._parts.processor,
            metrics=self._parts.metrics,
            settings=self._settings,
            clock=self._clock,
            slots=self._slots,
        )
        self._consumers[lease.key] = consumer
        self._tasks[lease.key] = group.create_task(
            self._consume(consumer), name=f"shard:{lease.table}:{lease.shard_id}"
        )
        log.info("shard.started", table=lease.table, shard=lease.shard_id, checkpoint=lease.checkpoint)

    async def _consume(self, consumer: ShardConsumer) -> None:
        key = consumer.lease.key
        try:
            await consumer.run()
            if consumer.finished:
                self._ended += 1
                await self.coordinator.shard_ended(consumer.lease)
            elif consumer.lost:
                self.coordinator.drop(key)
        except ReconcilerError as exc:  # the shard-sync holder's next listing finds the children
            log.warning("lineage.children_lookup_failed", shard=key[1], error=str(exc))
        finally:
            if not self._stopping.is_set():
                self._consumers.pop(key, None)
                self._tasks.pop(key, None)
            self._wake.set()  # a finished parent frees its children; a stopped shard may be taken again

    async def _drain(self) -> None:
        pending = [t for t in self._tasks.values() if not t.done()]
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=self._settings.shutdown_grace_seconds)
        if late:
            # Counted before cancelling: these consumers' unfinished chunks are delivered again later.
            log.warning("worker.drain_timeout", cancelled=len(late))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _release(self) -> None:
        """After the drain: hand every lease back, so peers take the shards at once."""
        self._released.set()
        try:
            await asyncio.wait_for(self.coordinator.release_all(), timeout=self._settings.lease_seconds)
        except TimeoutError:
            log.warning("lease.release_timeout")
