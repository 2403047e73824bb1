"""A queue bound to exactly the routing keys this process asks for.

The bridge's queue used to be bound with ``#``: every process received every
event, so each process's work grew with the number of processes. Now it is
bound to the keys of the pages the process holds, and nothing else reaches it.

The keys are bound on ``paypush.pages``, a direct exchange that ``paynotify``
feeds whole (an exchange-to-exchange binding with ``#``): RabbitMQ adds a
direct binding for about 0.6 ms of its CPU against 0.9 ms on a topic
exchange, and keeps it in 0.4 KiB against 1 KiB (BENCHMARKS.md), and a busy
process binds thousands a second when its pages come back after a restart.

One task turns the wanted set into bindings, on a few channels at once (an
AMQP channel answers one call at a time). A key given up is unbound only
after ``grace`` seconds, so a page that reloads (or reconnects to this
process) does not cost an unbind and a bind. The bindings are not aio-pika's
robust ones: its robust queue forgets a binding by walking all of them (slow
with tens of thousands), so they are kept here and made again by
``rebind_all`` after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aio_pika.abc import AbstractChannel, AbstractQueue

from server.lifecycle import Callbacks

log = logging.getLogger(__name__)

UNBIND_GRACE = 10.0


class RoutedQueue:
    def __init__(self, queue: AbstractQueue, exchange: str, channels: list[AbstractChannel],
                 grace: float = UNBIND_GRACE, errors: tuple[type[BaseException], ...] = (Exception,)):
        self.queue = queue
        self.exchange = exchange
        self.channels = channels
        self.grace = grace
        self._errors = errors
        self._wanted: set[str] = set()
        self._bound: set[str] = set()
        self._given_up: dict[str, float] = {}  # key -> when it stopped being wanted
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        self._unbind_timer: asyncio.TimerHandle | None = None  # one for all keys given up, not one each
        self._frozen = False
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self.binds = self.unbinds = 0
        # A key just bound: events for it reach this process from now on.
        self.on_bound: Callbacks[[str]] = Callbacks("routed_queue.on_bound")

    def __len__(self) -> int:
        return len(self._bound)

    @property
    def pending(self) -> int:
        """Keys wanted and not bound yet."""
        return len(self._wanted) - len(self._wanted & self._bound)

    @property
    def unbinding(self) -> int:
        """Keys given up and waiting out their grace before they are unbound."""
        return len(self._given_up)

    def freeze(self) -> None:
        """Shutdown: bind and unbind nothing more. The queue goes with the
        connection, its bindings with it, so a stopping process with 14,000
        pages spends nothing on each one's key (that was 45 % of closing them)."""
        self._frozen = True
        self._given_up.clear()
        if self._unbind_timer is not None:
            self._unbind_timer.cancel()
            self._unbind_timer = None

    def want(self, key: str) -> None:
        if self._frozen:
            return
        self._given_up.pop(key, None)
        self._wanted.add(key)
        if key not in self._bound:
            self._kick()

    def give_up(self, key: str) -> None:
        if self._frozen:
            return
        self._wanted.discard(key)
        if key in self._bound and key not in self._given_up:
            self._given_up[key] = time.monotonic()
            self._unbind_later()

    def _unbind_later(self) -> None:
        """Wake once the oldest key given up has waited out its grace."""
        if self._unbind_timer is None and self._given_up:
            due = next(iter(self._given_up.values())) + self.grace  # oldest first: dicts keep insertion order
            self._unbind_timer = self._loop.call_at(self._loop.time() + max(0.0, due - time.monotonic()),
                                                    self._unbind_due)

    def _unbind_due(self) -> None:
        self._unbind_timer = None
        self._kick()

    async def bound(self, key: str, within: float) -> bool:
        """Wait (at most ``within`` seconds) until ``key`` is bound; True if it is."""
        if key in self._bound:
            return True
        waiter = self._loop.create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            # asyncio.wait, not wait_for: a page that waits in vain raises
            # nothing. In a burst thousands do, and each TimeoutError's
            # traceback held the page's frames in a cycle until the collector
            # ran, interleaving garbage with the sockets that stay (pymalloc
            # kept 7 KiB a page of emptied pools; BENCHMARKS.md).
            await asyncio.wait((waiter,), timeout=within)
        finally:
            waiting = self._waiters.get(key)
            if waiting and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiters[key]
        return waiter.done()

    def rebind_all(self) -> None:
        """After a reconnect the queue is new and bound to nothing: bind every wanted key again."""
        self._bound.clear()
        self._given_up.clear()
        self._kick()

    def _kick(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run(), name="routed-queue")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._converge()
            except self._errors as exc:
                # The broker is gone; a reconnect calls rebind_all.
                log.warning("paynotify bindings not updated: %s: %s", type(exc).__name__, exc)
            self._unbind_later()

    async def _converge(self) -> None:
        while not self._frozen and (missing := list(self._wanted - self._bound)):
            await asyncio.gather(*(self._bind_some(channel, missing[n::len(self.channels)])
                                   for n, channel in enumerate(self.channels)))
        cutoff = time.monotonic() - self.grace
        going = [key for key, since in self._given_up.items() if since <= cutoff and key not in self._wanted]
        await asyncio.gather(*(self._unbind_some(channel, going[n::len(self.channels)])
                               for n, channel in enumerate(self.channels)))

    async def _bind_some(self, channel: AbstractChannel, keys: list[str]) -> None:
        raw = await channel.get_underlay_channel()
        for key in keys:
            if key not in self._wanted or key in self._bound:
                continue
            await raw.queue_bind(self.queue.name, self.exchange, key)
            self.binds += 1
            self._bound.add(key)
            for waiter in self._waiters.pop(key, ()):
                if not waiter.done():
                    waiter.set_result(None)
            self.on_bound(key)
            if key not in self._wanted:  # given up while its bind was under way
                self.give_up(key)

    async def _unbind_some(self, channel: AbstractChannel, keys: list[str]) -> None:
        raw = await channel.get_underlay_channel()
        for key in keys:
            if key in self._wanted or key not in self._bound:
                continue
            await raw.queue_unbind(self.queue.name, self.exchange, key)
            self.unbinds += 1
            self._bound.discard(key)
            self._given_up.pop(key, None)

    async def close(self) -> None:
        self.freeze()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
