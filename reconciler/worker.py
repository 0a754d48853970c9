"""The supervisor: find streams and shards, run one consumer per shard, serve HTTP, shut down in two phases.

One ``asyncio.TaskGroup`` owns every task. SIGTERM (first signal): stop claiming work, let consumers finish
and checkpoint their batch under ``shutdown_grace_seconds``, then cancel what is left. A second signal
cancels at once. Work that was not checkpointed is delivered again to whoever reads the shard next.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from reconciler.consumer import ShardConsumer
from reconciler.core.spec import RuleSet
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.observability.http import HttpServer
from reconciler.observability.metrics import Metrics
from reconciler.ports import SHARD_END, CheckpointStore, Shard, StreamSource
from reconciler.processing import Origin, RecordProcessor
from reconciler.settings import Settings

log = structlog.get_logger("reconciler.worker")


@dataclass(frozen=True, slots=True)
class Collaborators:
    source: StreamSource
    checkpoints: CheckpointStore
    processor: RecordProcessor
    metrics: Metrics


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
        self._consumers: dict[tuple[str, str], ShardConsumer] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._heartbeat = clock()
        self._problems: dict[str, str] = dict.fromkeys(rules.sources, "not discovered yet")
        self._discovered_once = False
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
        if self._stopping.is_set():
            return False, "shutting down"
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
        ).start()
        log.info("worker.started", http_port=self.http.port, sources=list(self._rules.sources))
        try:
            async with asyncio.TaskGroup() as group:
                await self._supervise(group)
                await self._drain()
        except ExceptionGroup as group:
            config = group.subgroup(ConfigError)
            if config is None:
                raise
            raise config.exceptions[0] from group  # a deployment mistake, reported plainly
        finally:
            await self.http.close()
        log.info(
            "worker.stopped",
            shards=len(self._consumers),
            finished=sum(c.finished for c in self._consumers.values()),
        )

    async def _supervise(self, group: asyncio.TaskGroup) -> None:
        next_discovery = self._clock()
        while not self._stopping.is_set():
            self._heartbeat = self._clock()
            if self._clock() >= next_discovery or self._wake.is_set():
                self._wake.clear()
                await self._discover(group)
                next_discovery = self._clock() + dt.timedelta(seconds=self._settings.discovery_seconds)
            await _wait_any(self._stopping, self._wake, seconds=1.0)

    async def _discover(self, group: asyncio.TaskGroup) -> None:
        """Each source on its own: one missing table or broken stream never keeps the others unread."""
        for table in self._rules.sources:
            try:
                await self._discover_table(group, table)
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

    def _source_down(self, table: str, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, ReconcilerError) else "unexpected error"
        self._problems[table] = f"{type(exc).__name__}: {message}"
        self._parts.metrics.source_up.labels(table).set(0)
        self._parts.metrics.failures.labels("discover", type(exc).__name__).inc()

    async def _discover_table(self, group: asyncio.TaskGroup, table: str) -> None:
        info = await self._parts.source.describe(table)  # each time: a re-enabled stream has a new ARN
        if info.view_type is None or not info.view_type.has_old_image:
            raise ConfigError(
                f"table {table!r} streams {info.view_type}; OLD_IMAGE or NEW_AND_OLD_IMAGES is needed"
            )
        shards = await self._parts.source.shards(info.arn)
        for shard in await self._ready(shards):
            self._start(group, table, shard)

    async def _ready(self, shards: list[Shard]) -> list[Shard]:
        """Shards to start now: not started yet, and parent (if still listed) read to its end."""
        listed = {s.shard_id for s in shards}
        ready = []
        for shard in shards:
            if (shard.stream_arn, shard.shard_id) in self._consumers:
                continue
            parent = shard.parent_id
            if parent and parent in listed:
                running = self._consumers.get((shard.stream_arn, parent))
                done = (
                    running.finished
                    if running
                    else (await self._parts.checkpoints.get(shard.stream_arn, parent) == SHARD_END)
                )
                if not done:
                    continue
            ready.append(shard)
        return ready

    def _start(self, group: asyncio.TaskGroup, table: str, shard: Shard) -> None:
        if self._stopping.is_set():
            return  # a signal arrived while discovery was awaiting: claim nothing new
        consumer = ShardConsumer(
            origin=Origin(table, shard.stream_arn, shard.shard_id),
            shard=shard,
            source=self._parts.source,
            checkpoints=self._parts.checkpoints,
            processor=self._parts.processor,
            metrics=self._parts.metrics,
            settings=self._settings,
            clock=self._clock,
        )
        key = (shard.stream_arn, shard.shard_id)
        self._consumers[key] = consumer
        task = group.create_task(consumer.run(), name=f"shard:{table}:{shard.shard_id}")
        task.add_done_callback(lambda _: self._wake.set())  # a finished parent may free its children
        self._tasks[key] = task
        log.info("shard.started", table=table, shard=shard.shard_id)

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


async def _wait_any(*events: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
