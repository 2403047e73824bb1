"""What starting and stopping need, shared by the web side and the workers:
work counted in flight (so a stop can wait for it without polling), a
collection of callbacks (so a hook has many listeners and nobody overwrites
another's), the loop that runs a periodic pass until told to stop, and the
batches that carry work done after a reply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Generic, ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


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


class Batches(Generic[T]):
    """Work to do after a reply, handed to ``handle`` a batch at a time by one task.

    What arrives while a batch is being handled waits for the next one, so a
    quiet server handles each item at once and a busy one pays one round trip
    for many items instead of one each. At most ``limit`` items wait: ``add``
    refuses more (False) and the caller leaves that item to its own recovery
    path, so a stalled store or broker cannot fill the memory. ``swallow``:
    failures that are expected (storage down) and cost one log line.
    """

    def __init__(self, name: str, handle: Callable[[list[T]], Awaitable[object]],
                 max_batch: int = 256, limit: int = 2000, swallow: tuple[type[BaseException], ...] = ()):
        self.name = name
        self.swallow = swallow
        self.max_batch = max_batch
        self.limit = limit
        self._handle = handle
        self._waiting: deque[T] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self.refused = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, item: T) -> bool:
        """Queue ``item``; False (and nothing queued) when ``limit`` items wait."""
        if len(self._waiting) >= self.limit:
            self._room.clear()
            self.refused += 1
            return False
        self._waiting.append(item)
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batches:{self.name}")
        return True

    async def put(self, item: T, wait: float) -> bool:
        """``add``, but when full first wait up to ``wait`` seconds for room:
        the caller slows down to the pace the batches go out at, instead of
        handing its work to a slower recovery path."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while len(self._waiting) >= self.limit and (left := deadline - loop.time()) > 0:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), left)
            except TimeoutError:
                break
        return self.add(item)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
                self._room.set()
                try:
                    await self._handle(batch)
                except self.swallow as exc:
                    log.warning("%s: a batch of %d failed: %s: %s", self.name, len(batch), type(exc).__name__, exc)
                except Exception:
                    log.exception("%s: a batch of %d failed", self.name, len(batch))
            self._idle.set()

    async def drain(self, within: float) -> bool:
        """Wait (at most ``within`` seconds) until nothing waits or is being
        handled; True if so. Used at shutdown."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.01, within))
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the task; what still waits is left to the callers' recovery paths."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
