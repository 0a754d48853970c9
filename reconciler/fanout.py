"""Bounded concurrency for the steps of one record's deletion, without deadlock when plans nest.

Two bounds, chosen so that nested plans (a linked item's own plan, run inside the step that deletes it) can
never wait on one another in a cycle:

* ``CallSlots``, one per record: at most ``fanout`` of the record's AWS calls (or listing pages) in flight.
  A call slot is held for one call only and never while waiting for anything else, so it cannot close a cycle.
* ``Steps``, one per plan (so one per nesting level): at most ``fanout`` of that plan's steps started and not
  finished, so one item with 10,000 linked items is never 10,000 tasks at once. A step holds its plan's step
  slot while it runs, nested plan included, but the nested plan starts its steps under a ``Steps`` of its own:
  a step only ever waits on a deeper level's slots and on call slots, never on its own level's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class CallSlots:
    """At most ``fanout`` calls at once."""

    def __init__(self, fanout: int) -> None:
        if fanout < 1:
            raise ValueError("fanout must be at least 1")
        self._slots = asyncio.Semaphore(fanout)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async with self._slots:
            return await fn()

    async def each(self, source: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        """``source``'s items, a slot held while each is fetched (a page read), not while it is used."""
        try:
            while True:
                async with self._slots:
                    try:
                        item = await anext(source)
                    except StopAsyncIteration:
                        return
                yield item
        finally:
            if isinstance(source, AsyncGenerator):
                await source.aclose()


class Steps:
    """Starts a plan's steps in ``group``, at most ``fanout`` unfinished at once; ``start`` waits for room."""

    def __init__(self, group: asyncio.TaskGroup, fanout: int) -> None:
        self._group = group
        self._slots = asyncio.Semaphore(fanout)

    async def start(self, step: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Task[T]:
        await self._slots.acquire()
        try:
            task = self._group.create_task(step())
        except BaseException:
            self._slots.release()
            raise
        task.add_done_callback(lambda _: self._slots.release())
        return task


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An ``asyncio.TaskGroup`` that re-raises a lone failure as itself, as the sequential code did: steps
    collect ``ReconcilerError``s as data, so what escapes is a bug or a cancellation, seldom more than one."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as failures:
        if len(failures.exceptions) == 1:
            raise failures.exceptions[0] from failures
        raise
