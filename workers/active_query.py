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


BATCH = 500


class ActiveQuery:
    def __init__(self, hub: PushHub, orders: Orders, payments: Payments, after: float):
        self.hub = hub
        self.orders = orders
        self.payments = payments
        self.after = after
        self._next: dict[str, tuple[float, float]] = {}  # order_id -> (when, interval)

    async def tick(self) -> int:
        """One pass; returns how many orders were found paid.

        One batched read per pass finds which waiting pages have had a QR for
        a while; every other order is looked at again only ``after`` later.
        """
        now = time.time()
        waiting = {s.order_id for s in self.hub.subscribers() if s.last_status == UNPAID}
        self._next = {k: v for k, v in self._next.items() if k in waiting}
        due = [o for o in waiting if self._next.get(o, (0.0, 0.0))[0] <= now][:BATCH]
        if not due:
            return 0
        docs = await self.orders.store.orders.find(
            {"_id": {"$in": due}, "status": UNPAID, "wx.at": {"$lt": now - self.after}},
            projection={"_id": 1}).to_list(BATCH)
        ripe = {d["_id"] for d in docs}
        found = 0
        for order_id in due:
            _when, interval = self._next.get(order_id, (0.0, self.after))
            if order_id not in ripe:  # no QR yet, or not long enough ago
                self._next[order_id] = (now + self.after, interval)
                continue
            self._next[order_id] = (now + interval, min(interval * 2, MAX_INTERVAL))
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
