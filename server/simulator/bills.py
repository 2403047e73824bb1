"""The simulator's daily trade bill (bill_type ALL), made from its own book of
trades and refunds in WeChat's format, for v2 ``downloadbill`` and v3
``tradebill`` alike.

What goes in a day (the Beijing-time calendar day, as WeChat cuts bills):
- a payment row for each transaction paid that day (by its ``time_end``): the
  trade's own and every further (duplicate) payment of it, each with its own
  transaction_id; 交易状态 SUCCESS, or REFUND once a refund was drawn on that
  transaction (WeChat prints the trade's state as of when the bill is made);
- a refund row for each refund of that day (its success time, else the time
  it was asked for), whatever its status (WeChat bills a refund when it is
  accepted and does not update the row afterwards);
- the summary: the row count and the sums of the rows' columns.

The handling fee is the simulator's own: 0.6% of each payment, rounded half
up to the fen, on payment rows only (refund rows carry a fee of 0; real WeChat
gives part of the fee back on a refund).

Any day can be asked for, today so far included: a sandbox convenience, since
real WeChat publishes a day's bill the next morning (from 9:00, Beijing time)
and answers "not ready" before. A day without a row has no bill ("No Bill
Exist" / NO_STATEMENT_EXIST), as at WeChat. The ``not_ready`` knob makes every
bill answer "being made" instead, to exercise a caller's retry.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import secrets
import time
from dataclasses import dataclass

from server.simulator.trades import REFUND, SUCCESS, Refund, Trade, TradeBook

BEIJING = dt.timezone(dt.timedelta(hours=8))
# WeChat's ALL bill, columns in its documented order (pay.weixin.qq.com/doc/v2/merchant/4011987833).
HEADER = (
    "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号",
    "用户标识", "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额",
    "微信退款单号", "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "商品名称",
    "商户数据包", "手续费", "费率", "订单金额", "申请退款金额", "费率备注")
SUMMARY_HEADER = ("总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额",
                  "申请退款总金额")
FEE_RATE_PER_MILLE = 6
FEE_RATE_TEXT = "0.60%"
FILE_LIFETIME = 30.0  # seconds a v3 download_url stays valid, as WeChat says


class BillUnavailable(Exception):
    """No bill to hand out: ``creating`` (the knob) or none for the day."""

    def __init__(self, creating: bool):
        super().__init__("bill being made" if creating else "no bill for that day")
        self.creating = creating


def yuan(fen: int) -> str:
    return f"{'-' if fen < 0 else ''}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def fee_of(total_fee: int) -> int:
    """0.6% of a payment in fen, rounded half up to the fen."""
    return (total_fee * FEE_RATE_PER_MILLE + 500) // 1000


@dataclass(frozen=True)
class Row:
    when: dt.datetime
    cells: tuple[str, ...]
    settled: int
    refunded: int
    fee: int
    order_total: int
    refund_asked: int


def _when_paid(time_end: str) -> dt.datetime:
    return dt.datetime.strptime(time_end, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING)


def _clean(text: str) -> str:
    # A row is one line: a line break in a product name would end it.
    return " ".join(text.split())


class BillDesk:
    def __init__(self, book: TradeBook, appid: str, mch_id: str):
        self.book = book
        self.appid = appid
        self.mch_id = mch_id
        self.not_ready = False
        self._files: dict[str, tuple[float, bytes]] = {}

    # -- the file ------------------------------------------------------------------------

    def rows(self, day: dt.date) -> list[Row]:
        refunds = self.book.all_refunds()
        drawn_on = {r.transaction_id for r in refunds}
        rows: list[Row] = []
        for trade in self.book.all_trades():
            if not trade.paid:
                continue
            paid = [(trade.transaction_id, trade.time_end), *((p.transaction_id, p.time_end)
                                                             for p in trade.extra_payments)]
            for transaction_id, time_end in paid:
                when = _when_paid(time_end)
                if when.date() == day:
                    state = REFUND if transaction_id in drawn_on else SUCCESS
                    rows.append(self._payment(trade, transaction_id, when, state))
        for refund in refunds:
            when = dt.datetime.fromtimestamp(refund.success_time or refund.created_at, BEIJING).replace(microsecond=0)
            if when.date() == day:
                rows.append(self._refund(self.book.get(refund.out_trade_no), refund, when))
        return sorted(rows, key=lambda r: r.when)

    def render(self, rows: list[Row]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(HEADER)
        for row in rows:
            writer.writerow("`" + cell for cell in row.cells)
        writer.writerow(SUMMARY_HEADER)
        fees = sum(r.fee for r in rows)
        writer.writerow("`" + cell for cell in (
            str(len(rows)), yuan(sum(r.settled for r in rows)), yuan(sum(r.refunded for r in rows)), "0.00",
            f"{yuan(fees)}000", yuan(sum(r.order_total for r in rows)), yuan(sum(r.refund_asked for r in rows))))
        return out.getvalue().encode("utf-8")

    def bill(self, day: dt.date, *, gzipped: bool) -> bytes:
        """The day's file as served; raises BillUnavailable."""
        if self.not_ready:
            raise BillUnavailable(creating=True)
        rows = self.rows(day)
        if not rows:
            raise BillUnavailable(creating=False)
        data = self.render(rows)
        return gzip.compress(data, mtime=0) if gzipped else data

    def _payment(self, trade: Trade, transaction_id: str, when: dt.datetime, state: str) -> Row:
        total = trade.total_fee
        fee = fee_of(total)
        cells = (when.strftime("%Y-%m-%d %H:%M:%S"), self.appid, self.mch_id, "0", "", transaction_id,
                 trade.out_trade_no, trade.openid, trade.request.get("trade_type", "NATIVE"), state, "OTHERS", "CNY",
                 yuan(total), "0.00", "0", "0", "0.00", "0.00", "", "", _clean(trade.request.get("body", "")),
                 _clean(trade.request.get("attach", "")), f"{yuan(fee)}000", FEE_RATE_TEXT, yuan(total), "0.00", "")
        return Row(when, cells, settled=total, refunded=0, fee=fee, order_total=total, refund_asked=0)

    def _refund(self, trade: Trade, refund: Refund, when: dt.datetime) -> Row:
        amount = refund.refund_fee
        cells = (when.strftime("%Y-%m-%d %H:%M:%S"), self.appid, self.mch_id, "0", "", refund.transaction_id,
                 trade.out_trade_no, trade.openid, trade.request.get("trade_type", "NATIVE"), REFUND, "OTHERS", "CNY",
                 "0.00", "0.00", refund.refund_id, refund.out_refund_no, yuan(amount), "0.00", "ORIGINAL",
                 refund.status, _clean(trade.request.get("body", "")), _clean(trade.request.get("attach", "")),
                 "0.00000", FEE_RATE_TEXT, "0.00", yuan(amount), "")
        return Row(when, cells, settled=0, refunded=amount, fee=0, order_total=0, refund_asked=amount)

    # -- v3: a file behind a short-lived token ----------------------------------------------

    def offer(self, data: bytes) -> str:
        now = time.monotonic()
        self._files = {t: f for t, f in self._files.items() if f[0] > now}
        token = secrets.token_urlsafe(32)
        self._files[token] = (now + FILE_LIFETIME, data)
        return token

    def fetch(self, token: str) -> bytes | None:
        entry = self._files.get(token)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]
