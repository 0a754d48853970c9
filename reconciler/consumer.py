"""Read one shard from its checkpoint to its end (or until told to stop), one batch at a time.

A batch is processed with bounded concurrency, then the checkpoint advances to the last record before the
first non-final outcome. If anything is not final, the shard is re-read from the checkpoint after a backoff,
so every record is delivered at least once. A closed shard read to its end is checkpointed as SHARD_END.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Mapping, Sequence

import structlog

from reconciler.core.outcomes import Outcome, Pending, checkpoint_after, is_final
from reconciler.core.records import StreamRecord, Undecodable, decode_record
from reconciler.errors import DecodeError, ExpiredIteratorError, ReconcilerError, TrimmedDataError
from reconciler.observability.metrics import Metrics
from reconciler.ports import SHARD_END, CheckpointStore, Shard, StreamSource
from reconciler.processing import Origin, RecordProcessor
from reconciler.settings import Settings

log = structlog.get_logger("reconciler.consumer")


class ShardConsumer:
    def __init__(
        self,
        *,
        origin: Origin,
        shard: Shard,
        source: StreamSource,
        checkpoints: CheckpointStore,
        processor: RecordProcessor,
        metrics: Metrics,
        settings: Settings,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.origin = origin
        self.shard = shard
        self._source = source
        self._checkpoints = checkpoints
        self._processor = processor
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._stop = asyncio.Event()
        self.last_activity = clock()
        self.finished = False
        self.busy = False

    def stop(self) -> None:
        """Finish the batch in hand, checkpoint it, and return."""
        self._stop.set()

    async def run(self) -> None:
        """Consume until the shard ends or ``stop()``; errors back off and resume from the checkpoint."""
        structlog.contextvars.bind_contextvars(table=self.origin.table, shard=self.shard.shard_id)
        self._metrics.shards.labels(self.origin.table).inc()
        # A shard whose first poll never succeeds must still age: its poll age counts from the start.
        self._metrics.last_poll.labels(self.origin.table, self.shard.shard_id).set(self._clock().timestamp())
        try:
            while not self._stop.is_set() and not self.finished:
                try:
                    await self._consume()
                except ReconcilerError as exc:
                    self._metrics.failures.labels("poll", type(exc).__name__).inc()
                    log.warning("shard.error", error=str(exc), error_type=type(exc).__name__)
                    await self._sleep(self._settings.retry_backoff_seconds)
                except (
                    Exception
                ) as exc:  # a bug must not stop every shard: back off, resume from the checkpoint
                    self._metrics.failures.labels("poll", type(exc).__name__).inc()
                    log.exception("shard.crashed", error_type=type(exc).__name__)
                    await self._sleep(self._settings.retry_backoff_seconds)
        finally:
            self._metrics.shards.labels(self.origin.table).dec()
            self._metrics.forget_shard(self.origin.table, self.shard.shard_id)
            log.info("shard.stopped", finished=self.finished)

    async def _consume(self) -> None:
        checkpoint = await self._checkpoints.get(self.shard.stream_arn, self.shard.shard_id)
        if checkpoint == SHARD_END:
            self.finished = True
            return
        try:
            iterator: str | None = await self._source.iterator(self.shard, checkpoint)
        except TrimmedDataError:
            # Records after the checkpoint are gone (24 h retention): the sweeper must find what they linked.
            log.error("shard.trimmed", checkpoint=checkpoint)
            self._metrics.failures.labels("poll", "TrimmedDataError").inc()
            await self._processor.record_gap(self.origin, checkpoint)
            iterator = await self._source.iterator(self.shard, None)
        idle = self._settings.idle_poll_seconds
        while iterator is not None and not self._stop.is_set():
            self.last_activity = self._clock()
            try:
                page = await self._source.records(iterator, self._settings.batch_size)
            except ExpiredIteratorError:
                log.info("shard.iterator_expired")
                return  # re-read from the checkpoint
            self._metrics.last_poll.labels(self.origin.table, self.shard.shard_id).set(
                self._clock().timestamp()
            )
            if page.records:
                idle = self._settings.idle_poll_seconds
                if not await self._handle(page.records):
                    await self._sleep(self._settings.retry_backoff_seconds)
                    return  # redeliver from the checkpoint
            elif page.next_iterator is not None:
                self._metrics.iterator_age.labels(self.origin.table, self.shard.shard_id).set(
                    0.0
                )  # caught up
                await self._sleep(idle)
                idle = min(idle * 2, self._settings.max_idle_poll_seconds)
            iterator = page.next_iterator
        if iterator is None:
            await self._checkpoints.put(self.shard.stream_arn, self.shard.shard_id, SHARD_END)
            log.info("shard.ended")
            self.finished = True

    async def _handle(self, raw: Sequence[Mapping[str, object]]) -> bool:
        """Process one batch in chunks, checkpointing after each; False if the shard must be re-read.

        Chunks of ``concurrency`` records keep the checkpoint close behind the work (a slow batch is not
        redone from its start) and keep liveness fresh; the first chunk with unfinished work ends the batch.
        """
        records = self._decode(raw)
        self._observe_age(records)
        size = self._settings.concurrency
        for start in range(0, len(records), size):
            self.busy = True
            try:
                outcomes = await asyncio.gather(*(self._one(r) for r in records[start : start + size]))
            finally:
                self.busy = False
            self.last_activity = self._clock()
            position = checkpoint_after(outcomes)
            if position is not None:
                await self._checkpoints.put(self.shard.stream_arn, self.shard.shard_id, position)
            if not all(is_final(o) for o in outcomes):
                return False
            if self._stop.is_set():
                return start + size >= len(records) and len(records) == len(raw)
        return len(records) == len(raw)

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

    async def _one(self, record: StreamRecord | Undecodable) -> Outcome:
        """One record's outcome; an unexpected error is a retriable outcome, never a lost batch."""
        try:
            return await self._processor.process(self.origin, record)
        except Exception as exc:
            self._metrics.failures.labels("process", type(exc).__name__).inc()
            log.exception("record.crashed", sequence_number=record.sequence_number)
            return Pending(record.sequence_number, f"unexpected {type(exc).__name__}")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
