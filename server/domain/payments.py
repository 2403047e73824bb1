"""Payments: Native checkout (a QR for an unpaid order) and recording the
money WeChat took, whether a notify told us or we asked.

Nothing here knows HTTP or which WeChat Pay API version answers (the gateway
seam hides it). Every payment, from a notify, an order query, or a query at
the deadline, is recorded by ``record_payment``: one path, through the
conditional unpaid -> paid (or closed -> paid) transition, so any number of
copies record one payment.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

from pymongo.errors import PyMongoError

from server.domain.errors import Conflict, UpstreamUnavailable
from server.domain.orders import CLOSED, PAID_FOR, UNPAID, Orders
from server.domain.refunds import Refunds
from server.gateway.abc import NativeOrder, Payment, PaymentGateway
from server.gateway.errors import GatewayError, NotifyRejected, TradeAlreadyPaid, TradeClosed
from server.push.routes import PushRoutes

log = logging.getLogger(__name__)

# WeChat keeps a code_url valid for two hours; we stop reusing it a bit before.
CODE_URL_REUSE_SECONDS = 2 * 3600 - 300


class OrderNotPayable(Conflict):
    pass


class PaymentBackendError(UpstreamUnavailable):
    pass


class PaymentNotRecorded(Exception):
    """WeChat reports a payment we cannot book: no such order, or another amount."""


class Payments:
    def __init__(self, orders: Orders, gateway: PaymentGateway, notify_url: str, push: PushRoutes,
                 refunds: Refunds):
        self.orders = orders
        self.gateway = gateway
        self.notify_url = notify_url
        self.push = push
        self.refunds = refunds

    async def create_native(self, user: str, order_id: str, client_ip: str) -> dict[str, Any]:
        """The QR for the user's own unpaid order (WeChat's code_url reused while valid)."""
        order = await self.orders.get_owned(user, order_id)
        if order["status"] != UNPAID:
            raise OrderNotPayable(f"order is {order['status']}")
        wx = order.get("wx") or {}
        code_url = wx.get("code_url") if time.time() - wx.get("at", 0) < CODE_URL_REUSE_SECONDS else None
        if not code_url:
            code_url = await self._place_native(order, client_ip)
        return {
            "code_url": code_url,
            "out_trade_no": order["_id"],
            "total_fee": int(order["pay_money"]),
            "push": self.push.for_order(order["_id"]),
        }

    async def _place_native(self, order: dict[str, Any], client_ip: str) -> str:
        names = ", ".join(f"{i['name']} x{i['num']}" for i in order["items"])
        try:
            checkout = await self.gateway.create_native(NativeOrder(
                out_trade_no=order["_id"], description=f"paypush - {names}", total_fee=int(order["pay_money"]),
                notify_url=self.notify_url, product_id=order["items"][0]["sku_id"],
                expires_at=dt.datetime.fromtimestamp(order["expires_at"], dt.UTC), client_ip=client_ip))
        except TradeAlreadyPaid:
            # Paid at WeChat but no notify recorded yet: ask, and record it now.
            await self.sync_with_wechat(order["_id"])
            raise OrderNotPayable("order is already paid") from None
        except TradeClosed:
            raise OrderNotPayable("order is closed") from None
        except GatewayError as exc:
            # The detail (hosts, WeChat's own wording) is for the log; the shopper gets no internals.
            log.warning("Native order for %s failed: %s", order["_id"], exc)
            raise PaymentBackendError("WeChat Pay is unavailable, try again shortly") from None
        await self.orders.remember_code_url(order["_id"], checkout.code_url, checkout.prepay_id)
        return checkout.code_url

    async def sync_with_wechat(self, order_id: str) -> str:
        """Ask WeChat about the trade and record a payment it knows of. Returns the trade state."""
        trade = await self.gateway.query(order_id)
        if trade.payment is not None:
            await self.record_queried_payment(trade.payment)
        return trade.state

    async def record_queried_payment(self, payment: Payment) -> bool:
        """Record a payment a query found (the notify never came). True if the order is paid now."""
        try:
            order = await self.record_payment(payment, found_by="order query")
        except PaymentNotRecorded as exc:
            log.warning("order query for %s: %s; not recorded", payment.out_trade_no, exc)
            return False
        return order["status"] in PAID_FOR

    async def handle_notify(self, body: bytes, headers: Mapping[str, str] | None = None,
                            reader: PaymentGateway | None = None) -> str:
        """Verify and record one notify (read by ``reader``, by default the gateway
        orders are placed through). Returns the order id; raises NotifyRejected."""
        notice = (reader or self.gateway).read_notify(body, headers or {})
        order_id = notice.out_trade_no
        if notice.refund is not None:  # API v3 sends refund notifies to the same URL
            await self.refunds.record_notified(notice.refund)
            return order_id
        if notice.payment is None:
            # A failed payment attempt: nothing to record but the fact.
            if not await self.orders.exists(order_id):
                raise NotifyRejected(f"unknown order {order_id!r}")
            await self.orders.add_log(order_id, "payment_failed", "system", notice.failure)
            return order_id
        try:
            await self.record_payment(notice.payment, found_by="notify")
        except PaymentNotRecorded as exc:
            raise NotifyRejected(str(exc)) from None
        return order_id

    async def record_payment(self, payment: Payment, found_by: str) -> dict[str, Any]:
        """The one path by which money WeChat took becomes a paid order.

        unpaid -> paid, or closed -> paid when the shopper paid after we closed
        (compensation). The common case, a first report for an unpaid order of
        that amount, is one conditional update; anything else is sorted out
        from a fresh read. Returns the order; raises PaymentNotRecorded.
        """
        order_id, transaction_id = payment.out_trade_no, payment.transaction_id
        remarks = transaction_id if found_by == "notify" else f"{transaction_id} (found by {found_by})"
        won, order = await self.orders.mark_paid(order_id, transaction_id, payment.paid_at, remarks,
                                                 total_fee=payment.total_fee)
        if won and order is not None:
            return order
        if order is None or order["status"] not in (UNPAID, *PAID_FOR, CLOSED):
            raise PaymentNotRecorded(f"unknown order {order_id!r}")
        repeat = order["status"] in PAID_FOR
        if payment.total_fee != int(order["pay_money"]):
            raise PaymentNotRecorded(f"total_fee {payment.total_fee} is not the order's {order['pay_money']}")
        if order["status"] == CLOSED:
            # Paid at WeChat after we closed it: the money is real, so is the sale.
            order = await self.orders.mark_paid_after_close(order_id, transaction_id, payment.paid_at, found_by)
        elif order["status"] == UNPAID:  # lost a race with a transition that then failed
            _, order = await self.orders.mark_paid(order_id, transaction_id, payment.paid_at, remarks)
        if order is None or order["status"] not in PAID_FOR:
            raise PaymentNotRecorded(f"order {order_id} is {order and order['status']}")
        if order.get("transaction_id") == transaction_id:
            if repeat:
                log.info("order %s: payment %s reported again (%s); already recorded", order_id,
                         transaction_id, found_by)
        else:
            # Paid twice at WeChat: the first payment is the sale, the second
            # goes back. Before the notify is answered, so a crash here gets
            # the notify again; a repeat finds the refund already under way.
            await self.orders.add_log(order_id, f"duplicate_payment_{transaction_id}", "system",
                                      f"{transaction_id}: {payment.total_fee} fen")
            try:
                await self.refunds.refund_duplicate(order_id, transaction_id, payment.total_fee)
            except PyMongoError:
                raise  # not recorded: the notify is refused, and WeChat sends it again
            except Exception:
                # Recorded as processing: its check asks WeChat again. The
                # payment itself is booked, so the notify is answered.
                log.exception("order %s: refund of the second payment %s not sent yet", order_id, transaction_id)
        return order


__all__ = ["NotifyRejected", "OrderNotPayable", "PaymentBackendError", "PaymentNotRecorded", "Payments"]
