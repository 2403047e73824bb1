"""Refunds: giving back money WeChat took, in part or in full.

Each refund lives in its order (``refunds.<out_refund_no>``) and moves
processing -> success | closed | abnormal by one conditional update of the
order per transition. Its amount is reserved on the order (``refund_reserved``)
by the same update that creates it, before WeChat is asked, so refunds in
flight can never add up to more than was paid; a refund that ends closed gives
its reservation back. An abnormal one keeps it: WeChat could not pay the
shopper back (a closed bank card) and a person settles it in WeChat's merchant
platform, so the money must not be offered for a second refund meanwhile.

A refund of a second payment for the same order (the shopper paid twice) draws
on that transaction, not on the order: it is reserved per transaction
(``duplicate_refunds.<transaction_id>``), at most one each.

WeChat's answer to the refund call, a refund query and a refund notify all go
through ``record``: one path, and a repeat of any of them changes nothing.
A refund is never lost: a check is scheduled on a delay queue before WeChat is
asked, and looks again (asking again with the same out_refund_no when WeChat
never got it) until the refund is final.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any, Protocol

from pymongo import ReturnDocument

from server.domain.errors import Conflict
from server.domain.orders import PAID, PAID_FOR, OrderNotFound, Orders, log_entry
from server.domain.refund_request import key_slot
from server.gateway.abc import (
    BEIJING,
    REFUND_ABNORMAL,
    REFUND_CLOSED,
    REFUND_FINAL,
    REFUND_PROCESSING,
    REFUND_SUCCESS,
    PaymentGateway,
    RefundRequest,
    RefundState,
)
from server.gateway.errors import GatewayError, NotifyRejected, RefundRefused

log = logging.getLogger(__name__)

class NotRefundable(Conflict):
    pass


class RefundRefusedByWeChat(Conflict):
    pass


class IdempotencyKeyReused(Conflict):
    pass


class RefundChecks(Protocol):
    """Where "look at this refund again later" goes (a delay queue)."""

    async def schedule(self, order_id: str, out_refund_no: str, attempt: int) -> None: ...


def bill_day(at: float) -> str:
    """The Beijing-time day of an instant, as WeChat's bill dates it (yyyymmdd)."""
    return dt.datetime.fromtimestamp(at, BEIJING).strftime("%Y%m%d")


def new_refund_no() -> str:
    """``out_refund_no``: unique, unguessable, dated for a person reading the bill (<= 64 chars)."""
    return "RF" + time.strftime("%Y%m%d", time.gmtime()) + secrets.token_hex(12)


def refunds_of(order: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The order's refunds, oldest first, each with its ``out_refund_no``."""
    entries = [{"out_refund_no": no, **r} for no, r in (order.get("refunds") or {}).items()]
    return sorted(entries, key=lambda r: r["created_at"])


def refundable(order: Mapping[str, Any]) -> int:
    """What may still be asked back: paid, less every refund not closed."""
    return int(order["pay_money"]) - int(order.get("refund_reserved", 0))


class Refunds:
    def __init__(self, orders: Orders, gateway: PaymentGateway, notify_url: str,
                 checks: RefundChecks | None = None):
        self.orders = orders
        self.store = orders.store
        self.gateway = gateway
        self.notify_url = notify_url
        self.checks = checks

    # -- asking ----------------------------------------------------------------

    async def request(self, order_id: str, amount: int, reason: str, who: str,
                      idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """An operator's refund of part or all of a paid order. Returns the
        refund and whether this call made it (False: the key's earlier refund)."""
        order = await self.orders.get_owned(who, order_id, any_owner=True)
        slot = key_slot(idempotency_key) if idempotency_key is not None else None
        if slot is not None and slot in (order.get("refund_keys") or {}):
            return self._same_key(order, slot, amount), False
        if order["status"] not in PAID_FOR:
            raise NotRefundable(f"order is {order['status']}: only a paid order can be refunded")
        pay_money = int(order["pay_money"])
        if amount > refundable(order):
            raise NotRefundable(f"{amount} fen is more than the {refundable(order)} fen still refundable")
        no = new_refund_no()
        await self._ensure_reserved_field(order)
        condition: dict[str, Any] = {
            "_id": order_id, "status": PAID, "pay_money": pay_money,
            # Refunds not closed, this one included, stay within what was paid.
            "refund_reserved": {"$lte": pay_money - amount}}
        fields: dict[str, Any] = {
            f"refunds.{no}": self._new_refund(amount, reason, who),
            **log_entry(f"refund_{no}", who, f"{amount} fen asked back: {reason}" if reason
                        else f"{amount} fen asked back")}
        if slot is not None:
            condition[f"refund_keys.{slot}"] = {"$exists": False}
            fields[f"refund_keys.{slot}"] = no
        reserved = await self.store.orders.find_one_and_update(
            condition, {"$set": fields, "$inc": {"refund_reserved": amount, "refunds_open": 1}},
            return_document=ReturnDocument.AFTER)
        if reserved is None:
            # Lost a race: another refund took the money, or the same key made it first.
            order = await self.orders.get_owned(who, order_id, any_owner=True)
            if slot is not None and slot in (order.get("refund_keys") or {}):
                return self._same_key(order, slot, amount), False
            if order["status"] not in PAID_FOR:
                raise NotRefundable(f"order is {order['status']}: only a paid order can be refunded")
            raise NotRefundable(f"{amount} fen is more than the {refundable(order)} fen still refundable")
        log.info("refund %s of %d fen for order %s asked by %s", no, amount, order_id, who)
        final = await self._submit(reserved, no)
        return self._refund_view(final or reserved, no), True

    async def refund_duplicate(self, order_id: str, transaction_id: str, amount: int) -> dict[str, Any] | None:
        """The second payment of an already paid order goes back in full: at
        most one refund per transaction, however often its notify comes."""
        no = new_refund_no()
        reserved = await self.store.orders.find_one_and_update(
            {"_id": order_id, f"duplicate_refunds.{transaction_id}": {"$exists": False}},
            {"$set": {f"duplicate_refunds.{transaction_id}": no,
                      f"refunds.{no}": {**self._new_refund(amount, "duplicate payment", "system"),
                                        "transaction_id": transaction_id, "duplicate": True},
                      **log_entry(f"refund_{no}", "system",
                                  f"second payment {transaction_id} of {amount} fen given back")},
             "$inc": {"refunds_open": 1}},
            return_document=ReturnDocument.AFTER)
        if reserved is None:
            return None  # already being given back
        log.warning("order %s paid twice: refund %s gives back %s (%d fen)", order_id, no, transaction_id, amount)
        return await self._submit(reserved, no)

    async def _ensure_reserved_field(self, order: Mapping[str, Any]) -> None:
        """``refund_reserved`` present (0) before a reservation's ``$lte`` condition
        reads it. "Missing or small enough" would need a top-level $or, and
        nx-27017's find_one_and_update with one hands back, under concurrency,
        another request's document (README, "nx-27017")."""
        if "refund_reserved" not in order:
            await self.store.orders.update_one({"_id": order["_id"], "refund_reserved": {"$exists": False}},
                                               {"$set": {"refund_reserved": 0}})

    def _same_key(self, order: Mapping[str, Any], slot: str, amount: int) -> dict[str, Any]:
        """The refund an Idempotency-Key already made; the key with another amount is a mistake."""
        refund = self._refund_view(order, order["refund_keys"][slot])
        if int(refund["amount"]) != amount:
            raise IdempotencyKeyReused(f"this Idempotency-Key already made refund {refund['out_refund_no']} "
                                       f"of {refund['amount']} fen, not {amount}")
        return refund

    @staticmethod
    def _new_refund(amount: int, reason: str, who: str) -> dict[str, Any]:
        return {"amount": amount, "status": REFUND_PROCESSING, "reason": reason, "who": who,
                "created_at": time.time(), "success_time": None}

    async def _submit(self, order: dict[str, Any], no: str) -> dict[str, Any] | None:
        """Schedule the refund's check, then ask WeChat. Returns the order after
        WeChat's answer was recorded (None when it could not be)."""
        await self._schedule_check(order["_id"], no, 1)
        try:
            return await self.ask_wechat(order, no, "refund call")
        except RefundRefusedByWeChat:
            if not order["refunds"][no].get("duplicate"):
                raise  # the operator is told; a second payment's refund is retried by the next sight of it
            return await self.orders.get(order["_id"])

    async def ask_wechat(self, order: dict[str, Any], no: str, found_by: str) -> dict[str, Any] | None:
        """Send the refund (again: the same request, so never a second refund) and
        record WeChat's answer. None when WeChat could not say; a refusal closes
        the refund and raises RefundRefusedByWeChat."""
        try:
            state = await self.gateway.refund(self._request_for(order, no))
        except RefundRefused as exc:
            await self._close_refused(order["_id"], no, order["refunds"][no], str(exc))
            raise RefundRefusedByWeChat(f"WeChat Pay refused the refund: {exc.message or exc.code}") from None
        except GatewayError as exc:
            # Maybe made, maybe not: the check asks again with the same out_refund_no.
            log.warning("refund %s for %s: WeChat Pay %s; the check will ask again", no, order["_id"], exc)
            return None
        return await self.record(state, found_by=found_by)

    def _request_for(self, order: Mapping[str, Any], no: str) -> RefundRequest:
        """The same request every time it is sent: WeChat keys it by out_refund_no."""
        refund = order["refunds"][no]
        amount = int(refund["amount"])
        return RefundRequest(
            out_trade_no=order["_id"], out_refund_no=no,
            # A second payment's refund is of that transaction, whose total is its own amount.
            total_fee=amount if refund.get("duplicate") else int(order["pay_money"]),
            refund_fee=amount, reason=refund.get("reason", ""), notify_url=self.notify_url,
            transaction_id=refund.get("transaction_id"))

    async def _schedule_check(self, order_id: str, no: str, attempt: int) -> None:
        if self.checks is None:
            return
        try:
            await self.checks.schedule(order_id, no, attempt)
        except Exception as exc:  # the broker: the sweeper's backstop still finds the refund
            log.warning("refund %s: check not scheduled (%s); the sweeper will look", no, exc)

    # -- recording ---------------------------------------------------------------

    async def record(self, state: RefundState, found_by: str) -> dict[str, Any] | None:
        """What WeChat says of a refund, from its reply, a query or a notify.
        Returns the order after it (None: not a refund of ours)."""
        order = await self.orders.get(state.out_trade_no)
        refund = ((order or {}).get("refunds") or {}).get(state.out_refund_no)
        if order is None or refund is None:
            log.warning("refund %s for %s (%s) is not one of ours", state.out_refund_no, state.out_trade_no,
                        found_by)
            return None
        if int(refund["amount"]) != state.amount:
            log.error("refund %s: WeChat says %d fen, we asked %d; not recorded", state.out_refund_no,
                      state.amount, refund["amount"])
            return None
        if state.refund_id and not refund.get("refund_id"):
            await self.store.orders.update_one({"_id": order["_id"]},
                                               {"$set": {f"refunds.{state.out_refund_no}.refund_id": state.refund_id}})
        if (state.status in REFUND_FINAL and refund["status"] in REFUND_FINAL
                and state.status != refund["status"]):
            log.error("refund %s for %s: WeChat now says %s, we recorded %s (%s); a person must look",
                      state.out_refund_no, order["_id"], state.status, refund["status"], found_by)
        if state.status not in REFUND_FINAL or refund["status"] != REFUND_PROCESSING:
            return order  # nothing new (still processing, or a repeat of the final word)
        return await self._finish(order, state, found_by)

    async def _finish(self, order: dict[str, Any], state: RefundState, found_by: str) -> dict[str, Any] | None:
        no, amount = state.out_refund_no, state.amount
        duplicate = bool(order["refunds"][no].get("duplicate"))
        inc: dict[str, int] = {"refunds_open": -1}
        if not duplicate and state.status == REFUND_SUCCESS:
            inc["refunded"] = amount
        if not duplicate and state.status == REFUND_CLOSED:
            inc["refund_reserved"] = -amount  # the money is the order's to refund again
        unset: dict[str, str] = {}
        if duplicate and state.status == REFUND_CLOSED:
            # The second payment is still the shopper's to get back: the next
            # sight of it (a notify again, the daily bill) makes a new refund.
            unset[f"duplicate_refunds.{order['refunds'][no].get('transaction_id')}"] = ""
        done = await self.store.orders.find_one_and_update(
            {"_id": order["_id"], f"refunds.{no}.status": REFUND_PROCESSING, f"refunds.{no}.amount": amount},
            {"$set": {f"refunds.{no}.status": state.status, f"refunds.{no}.success_time": state.success_time,
                      f"refunds.{no}.refund_id": state.refund_id or None,
                      # The Beijing day it ended: reconciliation finds the day's refunds by it.
                      f"refund_days.{bill_day(state.success_time or time.time())}": True,
                      **log_entry(f"refund_{state.status}_{no}", "system", f"{amount} fen, found by {found_by}")},
             "$inc": inc, **({"$unset": unset} if unset else {})},
            return_document=ReturnDocument.AFTER)
        if done is None:
            return await self.orders.get(order["_id"])  # another path recorded it first
        if state.status == REFUND_ABNORMAL:
            log.error("refund %s for %s is ABNORMAL at WeChat: the shopper was not paid back; settle it in "
                      "the merchant platform", no, order["_id"])
        else:
            log.info("refund %s for %s: %s (%s)", no, order["_id"], state.status, found_by)
        if (not duplicate and state.status == REFUND_SUCCESS and done["status"] == PAID
                and int(done.get("refunded", 0)) == int(done["pay_money"])):
            return await self.orders.mark_refunded(done["_id"], int(done["pay_money"])) or done
        return done

    async def _close_refused(self, order_id: str, no: str, refund: Mapping[str, Any],
                             why: str) -> dict[str, Any] | None:
        """WeChat said no outright: the refund is closed and its money reserved no more."""
        log.warning("refund %s for %s refused by WeChat Pay: %s", no, order_id, why)
        order = await self.orders.get(order_id)
        if order is None:
            return None
        return await self._finish(order, RefundState(no, order_id, "", int(refund["amount"]), REFUND_CLOSED),
                                  f"WeChat's refusal ({why[:100]})")

    async def record_made_elsewhere(self, order_id: str, state: RefundState) -> dict[str, Any] | None:
        """A refund WeChat has and we do not (made by hand in the merchant
        platform, found in the bill): recorded as it stands there, within
        what the order may still give back. None when it does not fit (a
        person must look) or it is known already."""
        order = await self.orders.get(order_id)
        if order is None or order["status"] not in PAID_FOR:
            return None
        if state.out_refund_no in (order.get("refunds") or {}):
            return order
        await self._ensure_reserved_field(order)
        pay_money, no, amount = int(order["pay_money"]), state.out_refund_no, state.amount
        holds = state.status != REFUND_CLOSED
        inc: dict[str, int] = {"refund_reserved": amount if holds else 0,
                               "refunded": amount if state.status == REFUND_SUCCESS else 0,
                               "refunds_open": 1 if state.status == REFUND_PROCESSING else 0}
        when = state.success_time or time.time()
        done = await self.store.orders.find_one_and_update(
            {"_id": order_id, "status": PAID, "pay_money": pay_money, f"refunds.{no}": {"$exists": False},
             "refund_reserved": {"$lte": pay_money - (amount if holds else 0)}},
            {"$set": {f"refunds.{no}": {**self._new_refund(amount, "made at WeChat, found in its bill",
                                                           "reconciliation"),
                                        "status": state.status, "success_time": state.success_time,
                                        "refund_id": state.refund_id or None, "elsewhere": True},
                      f"refund_days.{bill_day(when)}": True,
                      **log_entry(f"refund_{no}", "reconciliation",
                                  f"{amount} fen refunded at WeChat ({state.status}), found in its bill")},
             "$inc": inc},
            return_document=ReturnDocument.AFTER)
        if done is None:
            return None
        log.warning("order %s: refund %s of %d fen made at WeChat recorded from its bill", order_id, no, amount)
        if state.status == REFUND_PROCESSING:
            await self._schedule_check(order_id, no, 1)
        if int(done.get("refunded", 0)) == pay_money:
            return await self.orders.mark_refunded(order_id, pay_money) or done
        return done

    # -- notifies and checks -----------------------------------------------------------

    async def handle_notify(self, body: bytes, headers: Mapping[str, str]) -> str:
        """A refund notify (API v2's own URL). Returns the out_refund_no; raises NotifyRejected."""
        state = self.gateway.read_refund_notify(body, headers)
        return await self.record_notified(state)

    async def record_notified(self, state: RefundState) -> str:
        if await self.record(state, found_by="refund notify") is None:
            raise NotifyRejected(f"refund {state.out_refund_no[:64]!r} is not one we asked for")
        return state.out_refund_no

    # -- views ------------------------------------------------------------------------

    @staticmethod
    def _refund_view(order: Mapping[str, Any], no: str) -> dict[str, Any]:
        return next(r for r in refunds_of(order) if r["out_refund_no"] == no)


__all__ = ["NotRefundable", "OrderNotFound", "RefundChecks", "RefundRefusedByWeChat", "Refunds",
           "refundable", "refunds_of"]
