"""Looking at refunds again until they are final: what a refund check (from
its delay queue, workers/refund_check.py) and the sweeper's backstop do. A
refund is never lost: WeChat is asked where it stands and, when WeChat never
got it, asked for it again with the same out_refund_no."""

from __future__ import annotations

import enum
import logging
import time

from server.domain.refunds import RefundRefusedByWeChat, Refunds
from server.gateway.abc import REFUND_PROCESSING
from server.gateway.errors import GatewayError, RefundNotFound

log = logging.getLogger(__name__)


class Check(enum.Enum):
    FINAL = "final"  # nothing more to do
    AGAIN = "again"  # still processing, or WeChat could not be asked: look again later


class RefundChecker:
    def __init__(self, refunds: Refunds):
        self.refunds = refunds
        self.orders = refunds.orders
        self.store = refunds.store
        self.gateway = refunds.gateway

    async def check(self, order_id: str, no: str) -> Check:
        """Ask WeChat where the refund stands (sending it again if WeChat never
        got it) and record the answer."""
        order = await self.orders.get(order_id)
        refund = ((order or {}).get("refunds") or {}).get(no)
        if order is None or refund is None:
            log.warning("refund check for unknown refund %s of %s dropped", no[:64], order_id[:64])
            return Check.FINAL
        if refund["status"] != REFUND_PROCESSING:
            return Check.FINAL
        await self.store.orders.update_one({"_id": order_id}, {"$set": {f"refunds.{no}.checked_at": time.time()}})
        try:
            state = await self.gateway.query_refund(no)
        except RefundNotFound:
            # Our request never reached WeChat (a crash, or a failed call it did
            # not record): ask again with the same out_refund_no, which cannot
            # make a second refund.
            log.info("refund %s for %s unknown to WeChat: asking again", no, order_id)
            try:
                after = await self.refunds.ask_wechat(order, no, "refund asked again")
            except RefundRefusedByWeChat:
                return Check.FINAL
            if after is None:
                return Check.AGAIN  # WeChat could not say this time
        except GatewayError as exc:
            log.warning("refund check %s: WeChat Pay %s; will look again", no, exc)
            return Check.AGAIN
        else:
            after = await self.refunds.record(state, found_by="refund query")
            if after is None:
                return Check.FINAL  # not a refund of ours
        return Check.FINAL if after["refunds"][no]["status"] != REFUND_PROCESSING else Check.AGAIN

    async def stale(self, older_than: float, limit: int = 50) -> list[tuple[str, str]]:
        """Refunds processing whose last check is older than ``older_than``
        seconds: the backstop for a check message that was never published.
        Every order with an open refund is looked at (not only the first few),
        so refunds checked on time cannot hide a lost one."""
        now = time.time()
        found: list[tuple[str, str]] = []
        cursor = self.store.orders.find({"refunds_open": {"$gt": 0}}, projection={"refunds": 1})
        try:
            async for order in cursor:
                for no, refund in (order.get("refunds") or {}).items():
                    last = refund.get("checked_at") or refund["created_at"]
                    if refund["status"] == REFUND_PROCESSING and now - last > older_than:
                        found.append((order["_id"], no))
                if len(found) >= limit:
                    break
        finally:
            await cursor.close()
        return found[:limit]
