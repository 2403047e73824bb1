"""Reconciliation: WeChat's daily bill against our orders and refunds.

The bill is the merchant's ground truth. Each line is matched by
out_trade_no / transaction_id / out_refund_no with what we hold, and:

- a payment WeChat has and we do not (unpaid or closed here) becomes a payment
  through ``Payments.record_payment``, the same transition and log as any
  late payment (the compensation log when we had closed it);
- a second payment of a paid order is given back, as when its notify comes;
- a refund WeChat has and we do not is recorded as it stands there, and one we
  hold as processing takes WeChat's final word through the refund path;
- everything else that differs (a payment we hold that WeChat does not, an
  amount that differs, an order we do not know) is never "fixed": it is
  reported for a person.

Every fix goes through a conditional transition, so a second run finds nothing
to fix. The bill is read as it streams; what is kept per line is a few ids
and an amount.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.domain.money import yuan
from server.domain.orders import PAID_FOR, Orders
from server.domain.payments import PaymentNotRecorded, Payments
from server.domain.refunds import Refunds, bill_day, refunds_of
from server.gateway.abc import (
    BEIJING,
    BILL_PAYMENT,
    PAID_STATES,
    REFUND_ABNORMAL,
    REFUND_CLOSED,
    REFUND_PROCESSING,
    REFUND_SUCCESS,
    BillLine,
    Payment,
    PaymentGateway,
    RefundState,
)
from server.infra.store import Store

log = logging.getLogger(__name__)

# WeChat's refund statuses in the bill (v2 and v3 words) as ours.
BILL_REFUND_STATUS = {"SUCCESS": REFUND_SUCCESS, "PROCESSING": REFUND_PROCESSING, "REFUNDCLOSE": REFUND_CLOSED,
                      "CLOSED": REFUND_CLOSED, "CHANGE": REFUND_ABNORMAL, "ABNORMAL": REFUND_ABNORMAL}
LOOKUP_BATCH = 500


@dataclass
class Side:
    """One side's totals for the day, in fen."""

    payments: int = 0
    paid: int = 0
    refunds: int = 0
    refunded: int = 0
    fees: int = 0


@dataclass
class Finding:
    """A difference: ``kind`` says which, ``detail`` says it in words."""

    kind: str
    out_trade_no: str
    detail: str
    transaction_id: str = ""
    out_refund_no: str = ""
    wechat_amount: int | None = None
    our_amount: int | None = None


@dataclass
class Report:
    date: dt.date
    wechat: Side = field(default_factory=Side)
    wechat_summary: Side = field(default_factory=Side)  # the bill's own summary lines
    ours: Side = field(default_factory=Side)
    fixed: list[Finding] = field(default_factory=list)
    mismatches: list[Finding] = field(default_factory=list)
    ran_at: float = field(default_factory=time.time)

    @property
    def agrees(self) -> bool:
        return not self.mismatches

    def as_json(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "wechat": {**dataclasses.asdict(self.wechat),
                                                          "summary": dataclasses.asdict(self.wechat_summary)},
                "ours": dataclasses.asdict(self.ours),
                "fixed": [dataclasses.asdict(f) for f in self.fixed],
                "mismatches": [dataclasses.asdict(f) for f in self.mismatches],
                "agrees": self.agrees, "ran_at": self.ran_at}

    def as_text(self) -> str:
        """The summary an operator reads (``paypush reconcile``)."""
        w, s, o = self.wechat, self.wechat_summary, self.ours
        lines = [f"reconciliation of {self.date} (WeChat's bill, Beijing time)",
                 f"  WeChat: {w.payments} payments ¥{yuan(w.paid)}, {w.refunds} refunds ¥{yuan(w.refunded)}, "
                 f"fees ¥{yuan(w.fees)}  (its summary: {s.payments} trades, ¥{yuan(s.paid)} paid, "
                 f"¥{yuan(s.refunded)} refunded, ¥{yuan(s.fees)} fees)",
                 f"  ours:   {o.payments} payments ¥{yuan(o.paid)}, {o.refunds} refunds ¥{yuan(o.refunded)}",
                 f"  fixed: {len(self.fixed)}"]
        lines += [f"    {f.kind} {f.out_trade_no} {f.out_refund_no}: {f.detail}".rstrip() for f in self.fixed]
        lines.append(f"  differences left for a person: {len(self.mismatches)}")
        lines += [f"    {f.kind} {f.out_trade_no} {f.out_refund_no}: {f.detail} (WeChat {f.wechat_amount}, "
                  f"ours {f.our_amount})" for f in self.mismatches]
        lines.append("  both sides agree" if self.agrees else "  DIFFERENCES REMAIN")
        return "\n".join(lines)


def day_bounds(date: dt.date) -> tuple[float, float]:
    """The Beijing-time day as epoch seconds [start, end)."""
    start = dt.datetime.combine(date, dt.time(), BEIJING)
    return start.timestamp(), (start + dt.timedelta(days=1)).timestamp()


def yesterday_in_beijing(now: float | None = None) -> dt.date:
    return (dt.datetime.fromtimestamp(now if now is not None else time.time(), BEIJING)
            - dt.timedelta(days=1)).date()


class Reconciler:
    def __init__(self, store: Store, orders: Orders, payments: Payments, refunds: Refunds,
                 gateway: PaymentGateway):
        self.store = store
        self.orders = orders
        self.payments = payments
        self.refunds = refunds
        self.gateway = gateway

    async def run(self, date: dt.date) -> Report:
        """Download the day's bill, compare, fix what is safe, keep the report.
        Raises BillNotReady / GatewayError when the bill cannot be had."""
        bill = await self.gateway.download_bill(date)
        report = Report(date)
        payments: dict[str, list[BillLine]] = {}
        refunds: dict[str, list[BillLine]] = {}
        async for line in bill.lines:
            if line.kind == BILL_PAYMENT:
                report.wechat.payments += 1
                report.wechat.paid += line.amount
                payments.setdefault(line.out_trade_no, []).append(line)
            else:
                report.wechat.refunds += 1
                report.wechat.refunded += line.amount
                refunds.setdefault(line.out_trade_no, []).append(line)
            report.wechat.fees += line.fee
        summary = bill.summary
        report.wechat_summary = Side(payments=summary.trades, paid=summary.paid, refunded=summary.refunded,
                                     fees=summary.fees)
        await self._payments(date, payments, report)
        await self._refunds(date, refunds, report)
        await self._keep(report)
        log.info("reconciliation %s: WeChat %d payments / %d fen, %d refunds / %d fen; fixed %d, %d left for a "
                 "person", date, report.wechat.payments, report.wechat.paid, report.wechat.refunds,
                 report.wechat.refunded, len(report.fixed), len(report.mismatches))
        return report

    async def _with_orders(self, lines: dict[str, list[BillLine]]) -> AsyncIterator[tuple[BillLine,
                                                                                          dict[str, Any] | None]]:
        """Each bill line (grouped by out_trade_no) with our order, read 500 orders a query."""
        ids = list(lines)
        for i in range(0, len(ids), LOOKUP_BATCH):
            batch = ids[i:i + LOOKUP_BATCH]
            ours = {o["_id"]: o for o in await self.store.orders.find({"_id": {"$in": batch}}).to_list(None)}
            for order_id in batch:
                for line in lines[order_id]:
                    yield line, ours.get(order_id)

    # -- money in -------------------------------------------------------------------------

    async def _payments(self, date: dt.date, lines: dict[str, list[BillLine]], report: Report) -> None:
        start, end = day_bounds(date)
        seen_transactions: set[str] = set()
        async for line, order in self._with_orders(lines):
            seen_transactions.add(line.transaction_id)
            await self._payment_line(line, order, report)
        # Paid here that day (by WeChat's own payment time), not in WeChat's bill.
        async for order in self.store.orders.find({"pay_time": {"$gte": start, "$lt": end},
                                                   "status": {"$in": list(PAID_FOR)}}):
            report.ours.payments += 1
            report.ours.paid += int(order["pay_money"])
            if order.get("transaction_id") not in seen_transactions:
                report.mismatches.append(Finding(
                    "paid_here_not_at_wechat", order["_id"], "paid here, but not in WeChat's bill of that day",
                    transaction_id=order.get("transaction_id") or "", our_amount=int(order["pay_money"])))

    async def _payment_line(self, line: BillLine, order: dict[str, Any] | None, report: Report) -> None:
        if line.trade_state not in PAID_STATES:
            return  # no money stayed with WeChat (REVOKED, ...)
        if order is None:
            report.mismatches.append(Finding(
                "unknown_order", line.out_trade_no, "paid at WeChat for an order we do not know",
                transaction_id=line.transaction_id, wechat_amount=line.amount))
            return
        # The order's amount is what the trade asked, coupons included (订单金额);
        # the settled amount (应结订单金额) is less by the merchant's coupons.
        total = line.asked if line.asked is not None else line.amount
        if total != int(order["pay_money"]):
            report.mismatches.append(Finding(
                "amount_differs", order["_id"], "WeChat took another amount than the order's",
                transaction_id=line.transaction_id, wechat_amount=total, our_amount=int(order["pay_money"])))
            return
        known_second = line.transaction_id in (order.get("duplicate_refunds") or {})
        if order["status"] in PAID_FOR and order.get("transaction_id") == line.transaction_id:
            return  # agrees
        if order["status"] in PAID_FOR and known_second:
            return  # a second payment already being given back
        was = order["status"]
        try:
            after = await self.payments.record_payment(
                Payment(order["_id"], line.transaction_id, total, line.trade_time.timestamp()),
                found_by="reconciliation")
        except PaymentNotRecorded as exc:
            report.mismatches.append(Finding("not_recordable", order["_id"], str(exc),
                                             transaction_id=line.transaction_id, wechat_amount=line.amount))
            return
        if was in PAID_FOR:
            detail = "a second payment: given back"
        elif after.get("compensated"):
            detail = f"paid at WeChat after we closed it: recorded as paid (compensation), was {was}"
        else:
            detail = f"paid at WeChat, {was} here: recorded as paid"
        report.fixed.append(Finding("payment_recorded" if was not in PAID_FOR else "second_payment_refunded",
                                    order["_id"], detail, transaction_id=line.transaction_id,
                                    wechat_amount=line.amount))

    # -- money out -----------------------------------------------------------------------

    async def _refunds(self, date: dt.date, lines: dict[str, list[BillLine]], report: Report) -> None:
        day = bill_day(day_bounds(date)[0])
        seen: set[str] = set()
        async for line, order in self._with_orders(lines):
            seen.add(line.out_refund_no)
            await self._refund_line(line, order, report)
        # Refunds that ended here that day, not in WeChat's bill.
        async for order in self.store.orders.find({f"refund_days.{day}": {"$exists": True}}):
            for refund in refunds_of(order):
                ended = refund.get("success_time")
                if refund["status"] != REFUND_SUCCESS or ended is None or bill_day(ended) != day:
                    continue
                report.ours.refunds += 1
                report.ours.refunded += int(refund["amount"])
                if refund["out_refund_no"] not in seen:
                    report.mismatches.append(Finding(
                        "refunded_here_not_at_wechat", order["_id"], "a refund we hold as done, not in the bill",
                        out_refund_no=refund["out_refund_no"], our_amount=int(refund["amount"])))

    async def _refund_line(self, line: BillLine, order: dict[str, Any] | None, report: Report) -> None:
        status = BILL_REFUND_STATUS.get(line.refund_status, "")
        if order is None:
            report.mismatches.append(Finding("unknown_order", line.out_trade_no,
                                             "a refund at WeChat of an order we do not know",
                                             out_refund_no=line.out_refund_no, wechat_amount=line.amount))
            return
        ours = (order.get("refunds") or {}).get(line.out_refund_no)
        asked = line.asked if line.asked is not None else line.amount  # what the refund asked, before coupons
        state = RefundState(line.out_refund_no, order["_id"], line.refund_id, asked,
                            status or REFUND_PROCESSING,
                            line.trade_time.timestamp() if status == REFUND_SUCCESS else None)
        if ours is None and line.transaction_id and line.transaction_id != order.get("transaction_id"):
            # Made at WeChat from a second payment's transaction: not the order's
            # money to count as refunded, and not ours to book without a person.
            report.mismatches.append(Finding(
                "refund_of_second_payment", order["_id"],
                "a refund at WeChat of a transaction that is not the order's sale", transaction_id=line.transaction_id,
                out_refund_no=line.out_refund_no, wechat_amount=line.amount))
            return
        if ours is None:
            recorded = await self.refunds.record_made_elsewhere(order["_id"], state)
            if recorded is None:
                report.mismatches.append(Finding(
                    "refund_not_recordable", order["_id"],
                    "a refund at WeChat we cannot record: more than the order has left, or the order is not paid",
                    out_refund_no=line.out_refund_no, wechat_amount=line.amount))
            else:
                report.fixed.append(Finding("refund_recorded", order["_id"],
                                            f"refunded at WeChat ({line.refund_status}), not here: recorded",
                                            out_refund_no=line.out_refund_no, wechat_amount=line.amount))
            return
        if int(ours["amount"]) != asked:
            report.mismatches.append(Finding("refund_amount_differs", order["_id"],
                                             "the refund's amount differs", out_refund_no=line.out_refund_no,
                                             wechat_amount=asked, our_amount=int(ours["amount"])))
            return
        if ours["status"] == REFUND_PROCESSING and status and status != REFUND_PROCESSING:
            await self.refunds.record(state, found_by="reconciliation")
            report.fixed.append(Finding("refund_finished", order["_id"],
                                        f"processing here, {line.refund_status} at WeChat: recorded",
                                        out_refund_no=line.out_refund_no, wechat_amount=line.amount))
        elif status and ours["status"] != status and status != REFUND_PROCESSING:
            report.mismatches.append(Finding("refund_status_differs", order["_id"],
                                             f"{ours['status']} here, {line.refund_status} at WeChat",
                                             out_refund_no=line.out_refund_no, wechat_amount=line.amount))

    # -- keeping it ----------------------------------------------------------------------

    async def _keep(self, report: Report) -> None:
        """The day's report, replacing the last run's; what earlier runs fixed stays listed."""
        doc = report.as_json()
        before = await self.store.reconciliations.find_one({"_id": doc["date"]}) or {}
        doc["fixed_earlier"] = [*before.get("fixed_earlier", []), *before.get("fixed", [])]
        doc["runs"] = int(before.get("runs", 0)) + 1
        await self.store.reconciliations.replace_one({"_id": doc["date"]}, {**doc, "_id": doc["date"]}, upsert=True)

    async def reports(self, limit: int = 30) -> list[dict[str, Any]]:
        return await self.store.reconciliations.find({}).sort("_id", -1).limit(limit).to_list(limit)
