"""paynotify -> this process's pay-page sockets.

One exclusive queue per process, bound to the routing keys of the orders whose
pages this process holds, and to nothing else: a process's share of the events
does not grow with the number of processes. Each message goes to the sockets
watching its routing key's push token.

Nothing falls between the binding and the page: a socket waits for its key to
be bound before it reads its order's state (``heard``); one that could not
wait that long is offered the state again once the binding is made. After a
reconnect every key is bound again and every socket is offered its order's
state, so an event that passed while this process was cut off is not lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage
from pymongo.errors import PyMongoError

from server.domain.orders import Orders
from server.infra.bus import Bus
from server.infra.routed_queue import RoutedQueue
from server.lifecycle import Batches
from server.push.events import TRANSITION_AT, event_for
from server.push.hub import PushHub, Subscriber
from server.push.tokens import ROUTING_PREFIX, token_of_routing_key

log = logging.getLogger(__name__)


def make_handler(hub: PushHub) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def handle(message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False):
            key = message.routing_key or ""
            token = token_of_routing_key(key)
            if token is None:
                return
            try:
                event = json.loads(message.body)
            except ValueError:
                log.warning("paynotify message on %s is not JSON; dropped", key)
                return
            at = (message.headers or {}).get(TRANSITION_AT)
            if isinstance(event, dict):
                hub.dispatch(token, event, at if isinstance(at, float) else None)

    return handle


# How long a new pay-page socket waits for its key to be bound before it reads
# its order anyway (it is then caught up when the binding is made). A bind
# takes milliseconds; only a flood makes them queue, and then a page waiting
# holds one of the listener's opening slots: with 2 s, a restarting
# neighbour's pages came in at 128/s a process and sat in its accept queue,
# where the kernel never hands them to an idler process (BENCHMARKS.md).
BIND_WAIT = 0.25


class Bridge:
    def __init__(self, hub: PushHub, orders: Orders):
        self.hub = hub
        self.orders = orders
        self.queue: RoutedQueue | None = None
        self.bus: Bus | None = None
        # Sockets to offer their order's state once their key is bound, read
        # many orders to a query (after a reconnect every key is bound again).
        self._catch_up: Batches[str] = Batches("bridge.catch_up", self._offer_current, limit=1_000_000,
                                               swallow=(PyMongoError,))

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        queue = self.queue = await bus.consume_paynotify(make_handler(self.hub))
        for token in self.hub.watched():
            queue.want(ROUTING_PREFIX + token)
        queue.on_bound.add(self._bound)

        async def rebind() -> None:
            # A new queue, bound to nothing: each key's sockets are caught up as it is bound again.
            queue.rebind_all()

        bus.on_reconnect(rebind)

    def watch(self, token: str) -> None:
        """The hub's first socket for ``token``: hear its events from now on."""
        if self.queue is not None:
            self.queue.want(ROUTING_PREFIX + token)

    def stop_binding(self) -> None:
        """Shutdown: the pages are about to be closed, and the queue goes with
        the connection; their keys are neither bound nor unbound one by one."""
        if self.queue is not None:
            self.queue.freeze()

    def unwatch(self, token: str) -> None:
        if self.queue is not None:
            self.queue.give_up(ROUTING_PREFIX + token)

    def _bound(self, key: str) -> None:
        token = token_of_routing_key(key)
        if token is not None and any(sub.started for sub in self.hub.watching(token)):
            self._catch_up.add(token)

    async def _offer_current(self, tokens: list[str]) -> None:
        waiting: dict[str, list[Subscriber]] = {}
        for token in tokens:
            for sub in self.hub.watching(token):
                if sub.started:
                    waiting.setdefault(sub.order_id, []).append(sub)
        if not waiting:
            return
        for order in await self.orders.visible(list(waiting)):
            event = event_for(order)
            for sub in waiting[order["_id"]]:
                sub.offer(event)

    async def heard(self, token: str) -> None:
        """Return once events for ``token`` reach this process (or BIND_WAIT has passed)."""
        # With RabbitMQ away there is nothing to wait for: the page reads its
        # order now and is caught up when the binding is made after the reconnect.
        if self.queue is not None and self.bus is not None and self.bus.is_open:
            await self.queue.bound(ROUTING_PREFIX + token, BIND_WAIT)

    async def close(self) -> None:
        await self._catch_up.close()
        if self.queue is not None:
            await self.queue.close()
