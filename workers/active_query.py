"""Asks WeChat about orders whose pay page is open and waiting with no notify.

WeChat's advice for a late notify is to call orderquery: a lost notify then
still turns into "paid" on the page. Only orders with a socket on this process
and a QR issued a while ago are asked about, each with a growing interval.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pymongo.errors import PyMongoError

from server.orders import UNPAID, Orders
from server.payments import Payments
from server.push_hub import PushHub
from server.wxpay.errors import WxPayError

log = logging.getLogger(__name__)

MAX_INTERVAL = 60.0


# Orders looked at per pass (one read by _id each). A backstop for lost
# notifies must never become the load: at 10k waiting pages it spreads its
# look-ups out instead of reading them all (benchmarked: reading all of them,
# even batched, pushed notify latency into seconds).
PER_PASS = 25


class ActiveQuery:
    def __init__(self, hub: PushHub, orders: Orders, payments: Payments, after: float):
        self.hub = hub
        self.orders = orders
        self.payments = payments
        self.after = after
        self._next: dict[str, tuple[float, float]] = {}  # order_id -> (when, interval)

    async def tick(self) -> int:
        """One pass over at most PER_PASS due orders; returns how many were found paid."""
        now = time.time()
        waiting = {s.order_id for s in self.hub.subscribers() if s.last_status == UNPAID}
        self._next = {k: v for k, v in self._next.items() if k in waiting}
        for order_id in waiting - self._next.keys():  # new page: first look after a while
            self._next[order_id] = (now + self.after, self.after)
        due = sorted((when, oid) for oid, (when, _) in self._next.items() if when <= now)[:PER_PASS]
        found = 0
        for _, order_id in due:
            interval = self._next[order_id][1]
            self._next[order_id] = (now + interval, min(interval * 2, MAX_INTERVAL))
            order = await self.orders.store.orders.find_one({"_id": order_id}, projection={"status": 1, "wx": 1})
            issued = ((order or {}).get("wx") or {}).get("at", 0)
            if order is None or order["status"] != UNPAID or not issued or now - issued < self.after:
                continue
            try:
                if await self.payments.sync_with_wechat(order_id) == "SUCCESS":
                    log.info("active query: %s was paid without a notify", order_id)
                    found += 1
            except WxPayError as exc:
                if exc.err_code != "ORDERNOTEXIST":
                    log.info("active query for %s: %s", order_id, exc)
        return found


async def run(active: ActiveQuery, interval: float = 2.0) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await active.tick()
        except PyMongoError as exc:
            log.warning("active query: storage unavailable: %s", type(exc).__name__)
