"""Share requests between records in flight: ``DeleteObjects`` of up to 1,000 keys per bucket, and
``BatchGetItem`` of up to 100 keys per table for re-creation checks.

Each wrapper keeps, per bucket or table, one open batch. A caller's keys join it; the batch is sent when it
holds the request's limit of distinct keys, or ``linger`` seconds after its first key joined (a few ms: long
enough for the other records of a poll to join, short against a round trip). Every caller then takes exactly
its own part of the one answer; an error of the shared call is every caller's error. A key asked for by two
callers at once is sent once (S3 and DynamoDB both refuse a request naming a key twice) and both get its
answer. Pure asyncio: the wrappers sit on the ports, in front of any adapter or fake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from reconciler.core.dynamodb_json import Image
from reconciler.core.plan import LinkQuery
from reconciler.core.scope import S3Location
from reconciler.ports import ArtifactStore, DeleteReport, ItemStore, ObjectVersion, VersionPage

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

DEFAULT_LINGER = 0.005
MAX_DELETE_KEYS = 1000  # DeleteObjects
MAX_GET_KEYS = 100  # BatchGetItem


@dataclass(eq=False, slots=True)
class _Batch(Generic[K, R]):
    answer: asyncio.Future[R]
    keys: dict[K, None] = field(default_factory=dict)  # distinct, in the order they joined
    timer: asyncio.TimerHandle | None = None


class Coalescer(Generic[K, R]):
    """Per group (a bucket, a table), one open batch of distinct keys, sent as ``send(group, keys)`` when it
    holds ``limit`` keys or ``linger`` seconds after it opened."""

    def __init__(self, send: Callable[[str, list[K]], Awaitable[R]], *, limit: int, linger: float) -> None:
        if limit < 1 or linger < 0:
            raise ValueError("a batch needs a limit of at least one key and a linger of at least 0 s")
        self._send = send
        self._limit = limit
        self._linger = linger
        self._open: dict[str, _Batch[K, R]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def submit(self, group: str, keys: Sequence[K]) -> list[R]:
        """The answers of the batches ``keys`` went into (one, unless they filled a batch)."""
        answers: list[asyncio.Future[R]] = []
        for key in dict.fromkeys(keys):
            batch = self._open.get(group) or self._opened(group)
            batch.keys[key] = None
            if not answers or answers[-1] is not batch.answer:
                answers.append(batch.answer)
            if len(batch.keys) >= self._limit:
                self._flush(group, batch)
        # Shielded: a caller cancelled while waiting must not cancel the answer other callers share.
        return [await asyncio.shield(answer) for answer in answers]

    def _opened(self, group: str) -> _Batch[K, R]:
        loop = asyncio.get_running_loop()
        batch: _Batch[K, R] = _Batch(loop.create_future())
        batch.timer = loop.call_later(self._linger, self._flush, group, batch)
        self._open[group] = batch
        return batch

    def _flush(self, group: str, batch: _Batch[K, R]) -> None:
        if self._open.get(group) is not batch:
            return  # sent already (full before its timer fired)
        del self._open[group]
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._deliver(group, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, group: str, batch: _Batch[K, R]) -> None:
        try:
            batch.answer.set_result(await self._send(group, list(batch.keys)))
        except asyncio.CancelledError:
            batch.answer.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the call raised is every caller's to handle
            batch.answer.set_exception(exc)
            batch.answer.exception()  # retrieved: callers that went away leave no "never retrieved" noise

    async def close(self) -> None:
        """Send what is still open and wait for every batch in flight. Idempotent."""
        for group, batch in list(self._open.items()):
            self._flush(group, batch)
        if self._sending:
            await asyncio.wait(set(self._sending))


class CoalescingArtifactStore:
    """An ``ArtifactStore`` whose concurrent ``delete_versions`` calls for one bucket share ``DeleteObjects``
    requests of at most 1,000 keys; listings go straight to ``inner``."""

    def __init__(
        self, inner: ArtifactStore, *, linger: float = DEFAULT_LINGER, max_keys: int = MAX_DELETE_KEYS
    ) -> None:
        self._inner = inner
        self._deletes: Coalescer[ObjectVersion, DeleteReport] = Coalescer(
            inner.delete_versions, limit=max_keys, linger=linger
        )

    def list_versions(
        self, location: S3Location, *, exact: bool, after: ObjectVersion | None = None
    ) -> AsyncGenerator[VersionPage, None]:
        return self._inner.list_versions(location, exact=exact, after=after)

    async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        if not versions:
            return DeleteReport()
        mine = set(versions)
        reports = await self._deletes.submit(bucket, versions)
        # Only what this caller asked for: the shared answer also names other callers' versions.
        return DeleteReport(
            deleted=tuple(v for r in reports for v in r.deleted if v in mine),
            refused=tuple((v, code) for r in reports for v, code in r.refused if v in mine),
            absent=tuple(v for r in reports for v in r.absent if v in mine),
        )

    async def close(self) -> None:
        await self._deletes.close()


ItemKey = tuple[tuple[str, object], ...]
"""An item key as a hashable value: its (attribute, value) pairs by attribute name."""


def item_key(key: Mapping[str, object]) -> ItemKey:
    return tuple(sorted(key.items()))


class CoalescingItemStore:
    """An ``ItemStore`` whose concurrent ``get`` calls for one table share ``get_many`` requests of at most
    100 keys (the re-creation checks of the records in flight); everything else goes straight to ``inner``."""

    def __init__(
        self, inner: ItemStore, *, linger: float = DEFAULT_LINGER, max_keys: int = MAX_GET_KEYS
    ) -> None:
        self._inner = inner
        self._gets: Coalescer[ItemKey, dict[ItemKey, Image | None]] = Coalescer(
            self._get_many, limit=max_keys, linger=linger
        )

    def find(self, query: LinkQuery, key_attributes: Sequence[str]) -> AsyncIterator[Image]:
        return self._inner.find(query, key_attributes)

    async def get(self, table: str, key: Mapping[str, object]) -> Image | None:
        wanted = item_key(key)
        (answer,) = await self._gets.submit(table, [wanted])
        return answer[wanted]

    async def get_many(self, table: str, keys: Sequence[Mapping[str, object]]) -> list[Image | None]:
        return await self._inner.get_many(table, keys)

    async def delete_linked(self, query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        return await self._inner.delete_linked(query, key)

    async def _get_many(self, table: str, keys: list[ItemKey]) -> dict[ItemKey, Image | None]:
        images = await self._inner.get_many(table, [dict(k) for k in keys])
        return dict(zip(keys, images, strict=True))

    async def close(self) -> None:
        await self._gets.close()
