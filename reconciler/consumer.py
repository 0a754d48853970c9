"""Read one leased shard from its checkpoint to its end (or until told to stop), as a pipeline.

A reader fetches pages one ahead of the records being worked on. Records enter a bounded window in stream
order (``concurrency`` per shard, and a worker-wide bound shared by every shard) and finish in any order; a
record whose outcome is not final is retried in place after a backoff, holding its slot but not the others.
The checkpoint is the last record before the lowest unfinished one (``Window``), written under the lease
at most every ``checkpoint_seconds``; a lost lease stops the shard before anything more is written. A
closed shard read to its end, with every record final, is checkpointed as SHARD_END, which frees its
children.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from reconciler.core.leases import SHARD_END, Lease
from reconciler.core.outcomes import Outcome, Pending, Window, is_final
from reconciler.core.records import StreamRecord, Undecodable, decode_record
from reconciler.errors import (
    DecodeError,
    ExpiredIteratorError,
    LeaseLostError,
    ReconcilerError,
    TrimmedDataError,
)
from reconciler.observability.metrics import Metrics
from reconciler.ports import LeaseStore, Shard, StreamSource
from reconciler.processing import Attempts, Origin, RecordProcessor
from reconciler.settings import Settings

log = structlog.get_logger("reconciler.consumer")

MAX_BACKOFF_SECONDS = 60.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Page:
    records: list[StreamRecord | Undecodable]
    complete: bool  # False: decoding stopped at a record without a sequence number
    last: bool  # the shard is closed and this page reached its end


class ShardConsumer:
    def __init__(
        self,
        *,
        origin: Origin,
        lease: Lease,
        source: StreamSource,
        leases: LeaseStore,
        processor: RecordProcessor,
        metrics: Metrics,
        settings: Settings,
        clock: Callable[[], dt.datetime],
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.origin = origin
        self.lease = lease
        parent = lease.parents[0] if lease.parents else None
        self.shard = Shard(lease.stream_arn, lease.shard_id, parent, closed=False)
        self._source = source
        self._leases = leases
        self._processor = processor
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._shard_slots = asyncio.Semaphore(settings.concurrency)
        self._worker_slots = slots or asyncio.Semaphore(settings.max_records_in_flight)
        self._stop = asyncio.Event()
        self._moved = asyncio.Event()
        self._window = Window(lease.checkpoint)
        self._written = lease.checkpoint
        self._read_after: str | None = None  # the last record handed to the window
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_activity = clock()
        self.finished = False
        self.lost = False

    @property
    def busy(self) -> bool:
        """Records in flight: their AWS calls are bounded by timeouts, so long work is not a hang."""
        return bool(self._tasks)

    def stop(self) -> None:
        """Read nothing more; let the records in flight finish (a pending one stops retrying), checkpoint."""
        self._stop.set()

    def lose(self) -> None:
        """The lease is gone: stop at once, abandon the records in flight, write nothing more."""
        if self.finished:
            return  # SHARD_END gave the lease up itself: nothing was lost
        if not self.lost:
            self.lost = True
            self._metrics.lease_transitions.labels(self.origin.table, "lost").inc()
            log.warning("lease.lost", table=self.origin.table, shard=self.shard.shard_id)
        self._stop.set()
        for task in self._tasks:
            task.cancel()

    async def run(self) -> None:
        """Consume until the shard ends, ``stop()`` or ``lose()``; errors back off and resume."""
        structlog.contextvars.bind_contextvars(table=self.origin.table, shard=self.shard.shard_id)
        self._metrics.shards.labels(self.origin.table).inc()
        # A shard whose first poll never succeeds must still age: its poll age counts from the start.
        self._metrics.last_poll.labels(self.origin.table, self.shard.shard_id).set(self._clock().timestamp())
        if self.lease.ended:  # read to its end by an earlier owner
            self.finished = True
        checkpointer = asyncio.create_task(self._checkpointer(), name=f"checkpoint:{self.shard.shard_id}")
        try:
            await self._run()
            await self._settle()
            await self._flush()
        except LeaseLostError:
            self.lose()
        except ReconcilerError as exc:  # the last checkpoint failed: the next reader redoes a little more
            self._metrics.failures.labels("checkpoint", type(exc).__name__).inc()
            log.warning("checkpoint.failed", error=str(exc), error_type=type(exc).__name__)
        finally:
            checkpointer.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(checkpointer, *self._tasks, return_exceptions=True)
            self._metrics.shards.labels(self.origin.table).dec()
            self._metrics.forget_shard(self.origin.table, self.shard.shard_id)
            log.info("shard.stopped", finished=self.finished, lost=self.lost, checkpoint=self._written)

    async def _run(self) -> None:
        backoff = self._settings.retry_backoff_seconds
        while not self._stop.is_set() and not self.finished:
            try:
                await self._consume()
                backoff = self._settings.retry_backoff_seconds
            except LeaseLostError:
                raise
            except ReconcilerError as exc:
                # Throttled (LimitExceeded: more than two readers) or unavailable: this shard backs off alone.
                self._metrics.failures.labels("poll", type(exc).__name__).inc()
                log.warning("shard.error", error=str(exc), error_type=type(exc).__name__, backoff=backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except Exception as exc:  # a bug must not stop every shard: back off, resume
                self._metrics.failures.labels("poll", type(exc).__name__).inc()
                log.exception("shard.crashed", error_type=type(exc).__name__)
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _consume(self) -> None:
        """Read from after the last record handed out (records in flight are not read twice) to the end."""
        iterator = await self._iterator(self._read_after or self._window.position)
        pages: asyncio.Queue[_Page | BaseException] = asyncio.Queue(maxsize=1)
        reader = asyncio.create_task(self._read(iterator, pages), name=f"read:{self.shard.shard_id}")
        try:
            while not self._stop.is_set():
                page = await self._until_stopped(pages.get())
                if page is None:
                    return
                pages.task_done()  # the reader may fetch the next one while this one is admitted
                if isinstance(page, ExpiredIteratorError):
                    log.info("shard.iterator_expired")
                    return  # a fresh iterator after the last record read
                if isinstance(page, BaseException):
                    raise page
                if not await self._admit_all(page):
                    return
                if page.last:
                    await self._end()
                    return
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _iterator(self, after: str | None) -> str:
        try:
            return await self._source.iterator(self.shard, after)
        except TrimmedDataError:
            # Records after the checkpoint are gone (24 h retention): the sweeper must find what they linked.
            log.error("shard.trimmed", checkpoint=after)
            self._metrics.failures.labels("poll", "TrimmedDataError").inc()
            await self._processor.record_gap(self.origin, after)
            return await self._source.iterator(self.shard, None)

    async def _read(self, iterator: str | None, pages: asyncio.Queue[_Page | BaseException]) -> None:
        """Fetch and decode the next page while the one before is admitted: reading stays one page ahead of
        the window (the page being admitted and the next one, never more)."""
        idle = self._settings.idle_poll_seconds
        try:
            while iterator is not None and not self._stop.is_set():
                page = await self._source.records(iterator, self._settings.batch_size)
                self.last_activity = self._clock()
                self._metrics.last_poll.labels(self.origin.table, self.shard.shard_id).set(
                    self._clock().timestamp()
                )
                records = self._decode(page.records)
                self._observe_age(records)
                await pages.put(_Page(records, len(records) == len(page.records), page.next_iterator is None))
                await pages.join()  # taken: at most one page waits beside the one being admitted
                if page.records or page.next_iterator is None:
                    idle = self._settings.idle_poll_seconds
                else:
                    self._metrics.iterator_age.labels(self.origin.table, self.shard.shard_id).set(0.0)
                    await self._sleep(idle)  # caught up
                    idle = min(idle * 2, self._settings.max_idle_poll_seconds)
                iterator = page.next_iterator
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which decides
            await pages.put(exc)

    async def _admit_all(self, page: _Page) -> bool:
        """Hand a page's records to the window in stream order; False if the shard must be re-read."""
        for record in page.records:
            if not await self._admit(record):
                return False
        if not page.complete:
            # A record that cannot be placed: finish what came before it, checkpoint, then read it again.
            await self._settle()
            await self._flush()
            self._read_after = None
            # Raised, so the shard's backoff doubles (to 60 s) instead of re-reading every few seconds.
            raise DecodeError("a record without a usable sequence number: the shard waits before it")
        return True

    async def _admit(self, record: StreamRecord | Undecodable) -> bool:
        if not await self._acquire(self._shard_slots):
            return False
        if not await self._acquire(self._worker_slots):
            self._shard_slots.release()
            return False
        if self._stop.is_set():  # both slots came with the stop: a stop wins
            self._shard_slots.release()
            self._worker_slots.release()
            return False
        self._window.add(record.sequence_number)
        self._read_after = record.sequence_number
        self._metrics.in_flight.labels(self.origin.table).inc()
        task = asyncio.create_task(self._work(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _work(self, record: StreamRecord | Undecodable) -> None:
        """One record until its outcome is final, or the shard stops (then it stays unfinished). Retries
        back off, doubling; past the retry budget the record's remaining work is dead-lettered, so one poison
        record never holds its shard until the stream trims it."""
        try:
            first, backoff = self._clock(), self._settings.retry_backoff_seconds
            attempts = 0
            while True:
                outcome = await self._one(record)
                attempts += 1
                self.last_activity = self._clock()
                if isinstance(outcome, Pending) and self._spent(record, attempts):
                    spent = Attempts(attempts, first, self._clock())
                    outcome = await self._processor.give_up(self.origin, record, outcome, spent)
                if is_final(outcome):
                    if self._window.finish(outcome):
                        self._moved.set()
                    return
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                if self._stop.is_set():
                    return  # delivered again to whoever reads the shard next
        finally:
            self._shard_slots.release()
            self._worker_slots.release()
            self._metrics.in_flight.labels(self.origin.table).dec()

    def _spent(self, record: StreamRecord | Undecodable, attempts: int) -> bool:
        """Past the attempts allowed, or older (by its stream timestamp) than a record may get."""
        if attempts >= self._settings.max_attempts:
            return True
        if isinstance(record, StreamRecord):
            age = (self._clock() - record.created_at).total_seconds()
            return age >= self._settings.max_record_age_seconds
        return False

    async def _one(self, record: StreamRecord | Undecodable) -> Outcome:
        """One record's outcome; an unexpected error is a retriable outcome, never a lost record."""
        try:
            return await self._processor.process(self.origin, record)
        except Exception as exc:
            self._metrics.failures.labels("process", type(exc).__name__).inc()
            log.exception("record.crashed", sequence_number=record.sequence_number)
            return Pending(record.sequence_number, f"unexpected {type(exc).__name__}")

    async def _end(self) -> None:
        """The shard is closed and read to its end: once every record is final, its children may start."""
        await self._settle()
        if len(self._window):
            return  # stopped with records unfinished: whoever reads next finishes the shard
        await self._flush()
        await self._leases.checkpoint(self.lease, SHARD_END)
        self._written = SHARD_END
        self.finished = True
        self._metrics.shards_ended.labels(self.origin.table).inc()
        log.info("shard.ended")

    async def _settle(self) -> None:
        """Wait for the records in flight (a pending one ends its retries when the shard stops)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _checkpointer(self) -> None:
        """Write the position when it moved, at most every ``checkpoint_seconds``."""
        while True:
            await self._moved.wait()
            self._moved.clear()
            try:
                await self._flush()
            except LeaseLostError:
                self.lose()
                return
            except ReconcilerError as exc:  # retried at the next move or after the backoff
                self._metrics.failures.labels("checkpoint", type(exc).__name__).inc()
                log.warning("checkpoint.failed", error=str(exc), error_type=type(exc).__name__)
                self._moved.set()
                await asyncio.sleep(self._settings.retry_backoff_seconds)
            await asyncio.sleep(self._settings.checkpoint_seconds)

    async def _flush(self) -> None:
        position = self._window.position
        if position is None or position == self._written or self.lost or self.finished:
            return
        await self._leases.checkpoint(self.lease, position)
        self._written = position

    def _decode(self, raw: Sequence[Mapping[str, object]]) -> list[StreamRecord | Undecodable]:
        """Decode in stream order, up to the first record that cannot even be placed by sequence number."""
        records: list[StreamRecord | Undecodable] = []
        for item in raw:
            try:
                records.append(decode_record(item))
            except DecodeError as exc:
                # Without a sequence number it cannot be dead-lettered at a position or checkpointed past:
                # the shard stops here, loudly, rather than skip it.
                self._metrics.failures.labels("decode", "DecodeError").inc()
                log.error("record.unplaceable", reason=str(exc), after=len(records))
                break
        return records

    def _observe_age(self, records: Sequence[StreamRecord | Undecodable]) -> None:
        times = [r.created_at for r in records if isinstance(r, StreamRecord)]
        if times:
            age = (self._clock() - max(times)).total_seconds()
            self._metrics.iterator_age.labels(self.origin.table, self.shard.shard_id).set(max(age, 0.0))

    async def _acquire(self, slots: asyncio.Semaphore) -> bool:
        """A slot; False if the shard is told to stop while waiting for one."""
        if not slots.locked():
            return await slots.acquire()  # free: taken without yielding, so a page enters in one go
        return await self._until_stopped(slots.acquire()) is not None

    async def _until_stopped(self, awaitable: Awaitable[T]) -> T | None:
        """``awaitable``'s result, or None if the shard is told to stop first."""
        task = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled from outside: take both waits down with it
            task.cancel()
            raise
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # Done before or while it was cancelled (a slot acquired, a page taken): the result is ours to use.
        return task.result() if task.done() and not task.cancelled() else None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
