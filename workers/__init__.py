"""Coroutine consumers run inside the server process."""

from __future__ import annotations

import asyncio
import contextlib


async def rest(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` between passes, or less if ``stop`` is set meanwhile.

    True means stop: the worker starts no new pass (SIGTERM), whatever is left
    is for the next process.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
