"""What starting and stopping need, shared by the web side and the workers:
work counted in flight (so a stop can wait for it without polling), a
collection of callbacks (so a hook has many listeners and nobody overwrites
another's), and the loop that runs a periodic pass until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Generic, ParamSpec

log = logging.getLogger(__name__)

P = ParamSpec("P")


class InFlight:
    """Units of work under way (requests, queue messages, worker passes).

    ``idle()`` completes when none is left: a stop waits on that instead of
    looking at a counter every few milliseconds.
    """

    def __init__(self, name: str):
        self.name = name
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    async def idle(self) -> None:
        await self._idle.wait()


class Callbacks(Generic[P]):
    """Listeners of one hook, after aio-pika's CallbackCollection: each is
    added, never assigned over another, and a failing one is logged without
    keeping the rest from hearing."""

    def __init__(self, hook: str):
        self.hook = hook
        self._listeners: list[Callable[P, object]] = []

    def add(self, listener: Callable[P, object]) -> None:
        self._listeners.append(listener)

    def discard(self, listener: Callable[P, object]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def __len__(self) -> int:
        return len(self._listeners)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for listener in self._listeners:
            try:
                listener(*args, **kwargs)
            except Exception:
                log.exception("%s listener %r failed", self.hook, listener)


async def every(interval: float, one_pass: Callable[[], Awaitable[object]], stopping: asyncio.Event,
                passes: InFlight, name: str, swallow: tuple[type[BaseException], ...] = (),
                wait_first: bool = True) -> None:
    """Run ``one_pass`` every ``interval`` seconds until ``stopping`` is set.

    A pass under way when the stop comes finishes (it is counted in
    ``passes``); none starts after it. ``swallow``: failures that are expected
    (storage down) and cost one log line, after which the next pass tries again.
    """
    first = True
    while not stopping.is_set():
        if wait_first or not first:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
        first = False
        if stopping.is_set():
            return
        with passes.running():
            try:
                await one_pass()
            except swallow as exc:
                log.warning("%s: %s: %s", name, type(exc).__name__, exc)
