"""Keeping the garbage collector's full passes short in a process that holds many pages.

CPython's cyclic collector walks every object it tracks in a full pass
(generation 2), and nothing else runs meanwhile. A process holding 14,000
waiting pages tracks about a million objects; there a full pass took 1-6 s
(BENCHMARKS.md, "The collector"), and every push, notify and accept of that
process waited behind it. Those passes found nothing to collect. A waiting
page's objects live as long as the page, and a closed page is freed by
reference counting (handlers/ws.py drops the one cycle it had). The passes ran
only because the number of objects grew, which is all that opening pages does.

So every ``freeze_every`` seconds a collection of what is still in the
collector's sight (only what was made since the last one) is followed by
``gc.freeze()``: what survived it leaves the collector's sight. A full pass
then costs what the last few seconds made, not what the process holds.

What that gives up: a cycle formed among objects after they were frozen is not
collected, such as an object that was in the middle of a request at the freeze
and ended up in a cycle. Every ``reclaim_every`` seconds, the collector sees
everything again for one full pass. That pass has the old cost, but only once
an hour, at a moment of each process's own. Its log line says what it found, so
a leak shows.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import Callable

from server.lifecycle import InFlight, every

log = logging.getLogger(__name__)

FREEZE_SECONDS = 1.0
RECLAIM_SECONDS = 3600.0


class Freezer:
    def __init__(self, freeze_every: float = FREEZE_SECONDS, reclaim_every: float = RECLAIM_SECONDS,
                 spread: Callable[[], float] = random.random):
        """``spread``: a number in [0, 1) that sets when the first reclaim comes
        (between half and one and a half ``reclaim_every``), so processes
        started together do not all pause at once."""
        self.freeze_every = freeze_every
        self.reclaim_every = reclaim_every
        self._first_reclaim = reclaim_every * (0.5 + spread())

    def freeze_survivors(self) -> int:
        """Collect what is in the collector's sight, then freeze what survived; returns how many were unreachable."""
        found = gc.collect()
        gc.freeze()
        return found

    def reclaim(self) -> int:
        """One full pass over every object, frozen ones included; returns how many were unreachable."""
        started = time.perf_counter()
        gc.unfreeze()
        found = self.freeze_survivors()
        log.info("garbage collector: a full pass over every object took %.0f ms and found %d unreachable; "
                 "%d objects frozen again", (time.perf_counter() - started) * 1000, found, gc.get_freeze_count())
        return found

    def release(self) -> None:
        """Hand every object back to the collector (a test that is done with the freezer)."""
        gc.unfreeze()

    async def run(self, stopping: asyncio.Event, passes: InFlight) -> None:
        next_reclaim = time.monotonic() + self._first_reclaim

        async def one_pass() -> None:
            nonlocal next_reclaim
            if time.monotonic() >= next_reclaim:
                self.reclaim()
                next_reclaim = time.monotonic() + self.reclaim_every
            else:
                self.freeze_survivors()

        await every(self.freeze_every, one_pass, stopping, passes, "gc freezer")
