"""The backstop for pay pages that wait and hear nothing.

Each order with a page open on this process is looked up in MongoDB now and
then, with a growing interval. If it reached a final state, the page is told
(the event passed this process by: another process made the transition while
this one was cut off from RabbitMQ). If it is still unpaid and its QR was
issued a while ago, WeChat is asked: its advice for a late notify is to call
orderquery, so a lost notify still turns into "paid" on the page.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time

from pymongo.errors import PyMongoError

from server.domain.orders import CLOSED, PAID, UNPAID, Orders
from server.domain.payments import Payments
from server.gateway.errors import GatewayError, TradeNotFound
from server.lifecycle import InFlight, every
from server.push.events import event_for, transition_time
from server.push.hub import PushHub, Subscriber

log = logging.getLogger(__name__)

MAX_INTERVAL = 60.0


# Orders looked at per pass (read together in one query). A backstop for lost
# notifies must never become the load: with many waiting pages it spreads its
# look-ups out instead of reading them all.
PER_PASS = 25


class ActiveQuery:
    """Due look-ups wait in a heap, fed by the hub as pages open: a pass costs
    what it looks at, not what is connected (walking and sorting 10k waiting
    pages every pass took milliseconds the pushes waited behind)."""

    def __init__(self, hub: PushHub, orders: Orders, payments: Payments, after: float):
        self.hub = hub
        self.orders = orders
        self.payments = payments
        self.after = after
        self._due: list[tuple[float, str, str]] = []  # (when, order_id, push token)
        self._interval: dict[str, float] = {}  # order_id -> next interval, one heap entry per order
        for sub in hub.subscribers():
            self.watch(sub)
        hub.on_subscribe.add(self.watch)

    def watch(self, sub: Subscriber) -> None:
        """A page opened: its order gets a first look after a while (once, however many pages)."""
        if sub.order_id not in self._interval:
            self._interval[sub.order_id] = self.after
            heapq.heappush(self._due, (time.time() + self.after, sub.order_id, sub.token))

    def _still_waiting(self, token: str) -> bool:
        return any(sub.last_status == UNPAID for sub in self.hub.watching(token))

    async def tick(self, stop: asyncio.Event | None = None) -> int:
        """One pass over at most PER_PASS due orders; returns how many were found paid.

        Once ``stop`` is set no further order is looked at (shutdown)."""
        now = time.time()
        due: list[tuple[str, str]] = []  # (order_id, push token)
        for _ in range(PER_PASS):
            if not self._due or self._due[0][0] > now or (stop is not None and stop.is_set()):
                break
            _, order_id, token = heapq.heappop(self._due)
            if not self._still_waiting(token):
                del self._interval[order_id]  # no page waits: forget it until one opens again
                continue
            interval = self._interval[order_id]
            self._interval[order_id] = min(interval * 2, MAX_INTERVAL)
            heapq.heappush(self._due, (now + interval, order_id, token))
            due.append((order_id, token))
        if not due:
            return 0
        # One query for the pass: with a process per 14,000 pages, one read
        # per order was 90 store commands a second on the machine, queued in
        # front of the notifies' own.
        orders = {order["_id"]: order for order in await self.orders.visible([order_id for order_id, _ in due])}
        found = 0
        for order_id, token in due:
            order = orders.get(order_id)
            if order is None:
                continue
            if order["status"] in (PAID, CLOSED):
                # Settled elsewhere and its event never got here (RabbitMQ was
                # out of reach): the page hears it now. A page that already
                # has it takes a repeat for what it is, no news.
                kind = order["status"]
                self.hub.dispatch(token, event_for(order, kind), transition_time(order, kind))
                continue
            issued = (order.get("wx") or {}).get("at", 0)
            if order["status"] != UNPAID or not issued or now - issued < self.after:
                continue
            if stop is not None and stop.is_set():
                break
            try:
                if await self.payments.sync_with_wechat(order_id) == "SUCCESS":
                    log.info("active query: %s was paid without a notify", order_id)
                    found += 1
            except TradeNotFound:
                pass  # no QR was ever issued at WeChat: nothing to find
            except GatewayError as exc:
                log.info("active query for %s: %s", order_id, exc)
        return found


async def run(active: ActiveQuery, stopping: asyncio.Event, passes: InFlight, interval: float = 2.0) -> None:
    await every(interval, lambda: active.tick(stopping), stopping, passes, "active query",
                swallow=(PyMongoError,))
