"""Payments: Native checkout (unifiedorder -> QR) and WeChat's payment notify.

Nothing here knows HTTP. The notify is trusted only after its signature,
merchant and amount check out, and it is recorded through the conditional
unpaid -> paid transition, so any number of copies record one payment.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from server.domain.errors import Conflict, UpstreamUnavailable
from server.domain.orders import CLOSED, PAID, UNPAID, OrderNotFound, Orders
from server.gateway.errors import WxPayError
from server.gateway.wxpay_v2 import signing, xmlcodec
from server.gateway.wxpay_v2.client import WxPayClient, parse_wx_time
from server.push.routes import PushRoutes

log = logging.getLogger(__name__)

# WeChat keeps a code_url valid for two hours; we stop reusing it a bit before.
CODE_URL_REUSE_SECONDS = 2 * 3600 - 300


class NotifyRejected(Exception):
    """The notify cannot be recorded; WeChat gets FAIL with this reason and retries."""


class OrderNotPayable(Conflict):
    pass


class PaymentBackendError(UpstreamUnavailable):
    pass


class Payments:
    def __init__(self, orders: Orders, wx: WxPayClient, notify_url: str, push: PushRoutes):
        self.orders = orders
        self.wx = wx
        self.notify_url = notify_url
        self.push = push

    async def create_native(self, user: str, order_id: str, client_ip: str) -> dict[str, Any]:
        """The QR for the user's own unpaid order (WeChat's code_url reused while valid)."""
        order = await self.orders.get_owned(user, order_id)
        if order["status"] != UNPAID:
            raise OrderNotPayable(f"order is {order['status']}")
        wx = order.get("wx") or {}
        code_url = wx.get("code_url") if time.time() - wx.get("at", 0) < CODE_URL_REUSE_SECONDS else None
        if not code_url:
            code_url = await self._unified_order(order, client_ip)
        return {
            "code_url": code_url,
            "out_trade_no": order["_id"],
            "total_fee": int(order["pay_money"]),
            "push": self.push.for_order(order["_id"]),
        }

    async def _unified_order(self, order: dict[str, Any], client_ip: str) -> str:
        names = ", ".join(f"{i['name']} x{i['num']}" for i in order["items"])
        try:
            reply = await self.wx.unified_order(
                out_trade_no=order["_id"], body=f"paypush - {names}", total_fee=int(order["pay_money"]),
                notify_url=self.notify_url, product_id=order["items"][0]["sku_id"],
                time_expire=dt.datetime.fromtimestamp(order["expires_at"], dt.UTC),
                client_ip=client_ip)
        except WxPayError as exc:
            if exc.err_code == "ORDERPAID":
                # Paid at WeChat but no notify recorded yet: ask, and record it now.
                await self.sync_with_wechat(order["_id"])
                raise OrderNotPayable("order is already paid") from None
            if exc.err_code == "ORDERCLOSED":
                raise OrderNotPayable("order is closed") from None
            # The detail (hosts, WeChat's own wording) is for the log; the shopper gets no internals.
            log.warning("unifiedorder for %s failed: %s", order["_id"], exc)
            raise PaymentBackendError("WeChat Pay is unavailable, try again shortly") from None
        await self.orders.remember_code_url(order["_id"], reply["code_url"], reply.get("prepay_id", ""))
        return reply["code_url"]

    async def sync_with_wechat(self, order_id: str) -> str:
        """Ask WeChat about the trade and record a payment it knows of. Returns trade_state."""
        reply = await self.wx.order_query(order_id)
        state = reply.get("trade_state", "")
        if state == "SUCCESS":
            await self.record_queried_payment(order_id, reply)
        return state

    async def record_queried_payment(self, order_id: str, reply: dict[str, str]) -> bool:
        """Record a payment orderquery reported (the notify never came). True if paid now."""
        order = await self.orders.get(order_id)
        if order is None or str(order["pay_money"]) != reply.get("total_fee"):
            log.warning("orderquery for %s reports %s fen; not recorded", order_id, reply.get("total_fee"))
            return False
        transaction_id, pay_time = reply["transaction_id"], _pay_time(reply.get("time_end", ""))
        if order["status"] == CLOSED:
            order = await self.orders.mark_paid_after_close(order_id, transaction_id, pay_time)
        else:
            _, order = await self.orders.mark_paid(order_id, transaction_id, pay_time,
                                                   f"{transaction_id} (found by order query)")
        return order is not None and order["status"] == PAID

    async def handle_notify(self, body: bytes) -> str:
        """Verify and record one notify. Returns the order id; raises NotifyRejected."""
        try:
            fields = xmlcodec.parse(body)
        except xmlcodec.MalformedXML as exc:
            raise NotifyRejected(f"malformed body: {exc}") from None
        if fields.get("return_code") != "SUCCESS":
            raise NotifyRejected("return_code is not SUCCESS")
        merchant = self.wx.merchant
        accepted = signing.accepted_sign_types(merchant.sign_type)
        if not signing.verify(fields, merchant.key, accepted):
            sign_type = signing.sign_type_of(fields)
            if sign_type is not None and sign_type not in accepted:
                # Genuine or not, WeChat signs our notifies the way we place orders.
                raise NotifyRejected(f"signature does not verify: {sign_type} is weaker than "
                                     f"the {merchant.sign_type} this merchant signs with")
            raise NotifyRejected("signature does not verify")
        if fields.get("appid") != merchant.appid:
            raise NotifyRejected("appid is not ours")
        if fields.get("mch_id") != merchant.mch_id:
            raise NotifyRejected("mch_id is not ours")
        order_id = fields.get("out_trade_no", "")
        if not 0 < len(order_id) <= 32:
            raise NotifyRejected(f"unknown order {order_id[:32]!r}")
        if fields.get("result_code") != "SUCCESS":
            # A failed payment attempt: nothing to record but the fact.
            if not await self.orders.exists(order_id):
                raise NotifyRejected(f"unknown order {order_id!r}")
            await self.orders.add_log(order_id, "payment_failed", "system", fields.get("err_code_des", ""))
            return order_id
        total_fee = fields.get("total_fee", "")
        if not total_fee.isdigit():
            raise NotifyRejected(f"total_fee {total_fee[:16]!r} is not an amount in fen")
        transaction_id = fields.get("transaction_id", "")
        if not transaction_id or len(transaction_id) > 32:
            raise NotifyRejected("transaction_id missing")
        pay_time = _pay_time(fields.get("time_end", ""))
        # The common case, a first notify for an unpaid order of that amount, is
        # one conditional update; anything else is sorted out from a fresh read.
        won, order = await self.orders.mark_paid(order_id, transaction_id, pay_time, transaction_id,
                                                 total_fee=int(total_fee))
        if won:
            return order_id
        if order is None or order["status"] not in (UNPAID, PAID, CLOSED):
            raise NotifyRejected(f"unknown order {order_id!r}")
        if total_fee != str(order["pay_money"]):
            raise NotifyRejected(f"total_fee {total_fee} is not the order's {order['pay_money']}")
        if order["status"] == CLOSED:
            # Paid at WeChat after we closed it: the money is real, so is the sale.
            order = await self.orders.mark_paid_after_close(order_id, transaction_id, pay_time)
        elif order["status"] == UNPAID:  # lost a race with a transition that then failed
            _, order = await self.orders.mark_paid(order_id, transaction_id, pay_time, transaction_id)
        if order is None or order["status"] != PAID:
            raise NotifyRejected(f"order {order_id} is {order and order['status']}")
        # Paid twice at WeChat: keep the first, flag the second for a refund.
        if order.get("transaction_id") != transaction_id and await self.orders.add_log(
                order_id, "duplicate_payment", "system", transaction_id):
            log.warning("order %s paid twice: %s and %s; refund the second",
                        order_id, order.get("transaction_id"), transaction_id)
        return order_id


def _pay_time(time_end: str) -> float:
    try:
        return parse_wx_time(time_end).timestamp()
    except ValueError:
        return time.time()


__all__ = ["NotifyRejected", "OrderNotFound", "OrderNotPayable", "PaymentBackendError",
           "Payments"]
