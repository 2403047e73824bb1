"""Deciding what becomes of an order at its deadline.

Asks WeChat first, because the shopper may have paid at the last second or the
notify may have been lost: SUCCESS is recorded as a payment (compensation),
NOTPAY is closed at WeChat and then here. Every step is one of the conditional
transitions in ``orders``, so the queue worker, the sweeper and a notify can
all meet on the same order and still leave it paid xor closed.
"""

from __future__ import annotations

import enum
import logging
import time

from pymongo.errors import PyMongoError

from server.domain.orders import CLOSED, PAID_FOR, REJECTED, RELEASING, RESERVING, UNPAID, Orders
from server.domain.payments import Payments
from server.gateway.abc import PAID_STATES, USERPAYING, PaymentGateway
from server.gateway.errors import CloseTooEarly, GatewayError, TradeAlreadyPaid, TradeClosed, TradeNotFound

log = logging.getLogger(__name__)

# A "reserving" order older than this lost its process mid-reservation.
ABANDONED_RESERVATION_SECONDS = 60.0


class Outcome(enum.Enum):
    FINAL = "final"          # paid, closed or gone: ack
    NOT_DUE = "not_due"      # early: look again at the deadline
    LATER = "later"          # WeChat says wait (USERPAYING, too young to close)
    RETRY = "retry"          # something failed: back off


class Timeouts:
    def __init__(self, orders: Orders, payments: Payments, gateway: PaymentGateway):
        self.orders = orders
        self.payments = payments
        self.gateway = gateway
        self.outcomes: dict[str, int] = {o.value: 0 for o in Outcome}

    async def settle(self, order_id: str) -> tuple[Outcome, float]:
        """Drive the order toward paid or closed. Returns the outcome and, for
        NOT_DUE, the seconds until its deadline."""
        try:
            outcome, wait = await self._settle(order_id)
        except PyMongoError as exc:
            log.warning("timeout %s: storage unavailable (%s), will retry", order_id, type(exc).__name__)
            outcome, wait = Outcome.RETRY, 0.0
        except GatewayError as exc:
            log.warning("timeout %s: WeChat Pay %s, will retry", order_id, exc)
            outcome, wait = Outcome.RETRY, 0.0
        self.outcomes[outcome.value] += 1
        return outcome, wait

    async def _settle(self, order_id: str) -> tuple[Outcome, float]:
        order = await self.orders.get(order_id)
        if order is None:
            log.warning("timeout for unknown order %r ignored", order_id[:64])
            return Outcome.FINAL, 0.0
        status = order["status"]
        if status == CLOSED:  # give back what a crash may have kept held
            await self.orders.stock.give_back(order)
            return Outcome.FINAL, 0.0
        if status in PAID_FOR:  # paid (or since refunded): settle what a crash may have left on the SKUs
            if order.get("compensated"):
                await self.orders.stock.take_again(order)
            await self.orders.stock.keep_as_sold([order])
            return Outcome.FINAL, 0.0
        if status == REJECTED:
            return Outcome.FINAL, 0.0
        if status == RELEASING:  # its release was cut short
            await self.orders.abandon_reservation(order)
            return Outcome.FINAL, 0.0
        if status == RESERVING:
            if time.time() - order["created_at"] < ABANDONED_RESERVATION_SECONDS:
                return Outcome.NOT_DUE, ABANDONED_RESERVATION_SECONDS
            await self.orders.abandon_reservation(order)
            log.info("order %s: abandoned reservation released", order_id)
            return Outcome.FINAL, 0.0
        if status != UNPAID:
            # A state this worker has no rule for: nothing to close, nothing to keep retrying.
            log.error("timeout %s: status %r has no deadline rule; left as it is", order_id, status)
            return Outcome.FINAL, 0.0
        remaining = order["expires_at"] - time.time()
        if remaining > 0.5:
            return Outcome.NOT_DUE, remaining
        return await self._ask_wechat(order_id)

    async def _ask_wechat(self, order_id: str) -> tuple[Outcome, float]:
        try:
            state = await self.payments.sync_with_wechat(order_id)
        except TradeNotFound:  # the pay page never asked for a QR
            await self.orders.close(order_id, "timed out (no WeChat trade)")
            return Outcome.FINAL, 0.0
        if state in PAID_STATES:  # recorded by the query, as a late payment
            return Outcome.FINAL, 0.0
        if state == USERPAYING:
            return Outcome.LATER, 0.0
        try:
            await self.gateway.close(order_id)
        except TradeAlreadyPaid:  # paid between our query and our close
            paid = await self.payments.sync_with_wechat(order_id) in PAID_STATES
            return (Outcome.FINAL, 0.0) if paid else (Outcome.RETRY, 0.0)
        except CloseTooEarly:
            return Outcome.LATER, 0.0
        except (TradeClosed, TradeNotFound):
            pass  # closed already: all that is left is our side
        await self.orders.close(order_id, f"timed out (WeChat trade {state or 'unknown'}, closed)")
        return Outcome.FINAL, 0.0
