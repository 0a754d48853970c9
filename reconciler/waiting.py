"""Waiting for whichever of several events is set first, for at most a while."""

from __future__ import annotations

import asyncio


async def wait_any(*events: asyncio.Event, seconds: float | None = None) -> None:
    """Return once any of ``events`` is set, or after ``seconds`` (None: no bound)."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
