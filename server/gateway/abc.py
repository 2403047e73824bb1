"""The payment-gateway seam: what paypush asks of WeChat Pay, whatever API
version answers. WeChat Pay v2 (server/gateway/wxpay_v2) is one implementation;
v3 arrives as a sibling. The domain speaks only these types and the errors in
server/gateway/errors.py, so it never learns which version it talks to."""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

# WeChat Pay's clock: every time it prints, and the day a bill covers, is Beijing time.
BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")

# WeChat's trade states, the same words in v2 and v3.
SUCCESS, REFUND, NOTPAY, CLOSED, USERPAYING = "SUCCESS", "REFUND", "NOTPAY", "CLOSED", "USERPAYING"
PAID_STATES = frozenset({SUCCESS, REFUND})  # REFUND: paid, then (partly) given back


@dataclass(frozen=True)
class NativeOrder:
    """A Native (QR) trade to place for one of our orders."""

    out_trade_no: str
    description: str
    total_fee: int  # fen
    notify_url: str
    product_id: str
    expires_at: dt.datetime
    client_ip: str


@dataclass(frozen=True)
class NativeCheckout:
    code_url: str  # what the QR encodes
    prepay_id: str


@dataclass(frozen=True)
class Payment:
    """Money WeChat says it took for one of our orders."""

    out_trade_no: str
    transaction_id: str
    total_fee: int  # fen
    paid_at: float  # epoch seconds


@dataclass(frozen=True)
class Trade:
    """A trade as WeChat sees it now; ``payment`` is set when the state is a paid one."""

    out_trade_no: str
    state: str
    payment: Payment | None = None


# A refund's states, ours and (lower-cased) WeChat's: v2 SUCCESS/PROCESSING/
# REFUNDCLOSE/CHANGE and v3 SUCCESS/PROCESSING/CLOSED/ABNORMAL map onto these.
REFUND_PROCESSING, REFUND_SUCCESS, REFUND_CLOSED, REFUND_ABNORMAL = "processing", "success", "closed", "abnormal"
REFUND_FINAL = frozenset({REFUND_SUCCESS, REFUND_CLOSED, REFUND_ABNORMAL})


@dataclass(frozen=True)
class RefundRequest:
    """Money to give back from one trade. ``out_refund_no`` is ours and is sent
    again unchanged when a call must be retried (WeChat then answers for the
    same refund instead of making a second one)."""

    out_trade_no: str
    out_refund_no: str
    total_fee: int  # the trade's amount, fen
    refund_fee: int  # this refund, fen
    reason: str
    notify_url: str
    # Set: refund this transaction (a second payment of the same order);
    # unset: the order's trade, by out_trade_no.
    transaction_id: str | None = None


@dataclass(frozen=True)
class RefundState:
    """A refund as WeChat sees it now (from the refund call, a query or a notify)."""

    out_refund_no: str
    out_trade_no: str
    refund_id: str  # WeChat's id for it
    amount: int  # fen
    status: str  # REFUND_PROCESSING, REFUND_SUCCESS, REFUND_CLOSED or REFUND_ABNORMAL
    success_time: float | None = None  # epoch seconds, when status is success


@dataclass(frozen=True)
class Notice:
    """A notify whose signature, merchant and shape checked out. ``payment`` is
    None for a failed payment attempt (``failure`` says why). ``refund`` is set
    (and ``payment`` None) for a refund notify (API v3 sends both kinds to one URL)."""

    out_trade_no: str
    payment: Payment | None
    failure: str = ""
    refund: RefundState | None = None


# A bill line's kinds: money in (a payment) and money out (a refund).
BILL_PAYMENT, BILL_REFUND = "payment", "refund"


@dataclass(frozen=True)
class BillLine:
    """One line of WeChat's daily trade bill (bill_type ALL), amounts in fen.

    A payment line: ``amount`` is what the shopper paid for the trade (v2
    应结订单金额 / v3 应结订单金额), ``trade_state`` SUCCESS (or REFUND/REVOKED as
    WeChat prints it). A refund line (交易状态 REFUND with the refund columns
    filled): ``amount`` is the refund (退款金额), with ``out_refund_no``,
    ``refund_id`` and ``refund_status`` (SUCCESS, PROCESSING, ...)."""

    kind: str  # BILL_PAYMENT or BILL_REFUND
    trade_time: dt.datetime  # as printed, Beijing time (tz-aware, +08:00)
    out_trade_no: str
    transaction_id: str
    amount: int
    trade_state: str
    fee: int = 0  # WeChat's handling fee on this line, fen
    out_refund_no: str = ""
    refund_id: str = ""
    refund_status: str = ""
    # What the trade or refund asked for before coupons (订单金额 / 申请退款金额):
    # our pay_money and refund amounts are these. None when the bill has no such column.
    asked: int | None = None


@dataclass
class BillSummary:
    """The bill's own totals (its summary lines), in fen."""

    trades: int = 0  # 总交易单数
    paid: int = 0  # 应结订单总金额
    refunded: int = 0  # 退款总金额
    fees: int = 0  # 手续费总金额


@dataclass
class Bill:
    """A day's bill, read as it streams: iterate ``lines`` once; ``summary`` is
    filled when the iteration ends (WeChat prints it after the lines)."""

    date: dt.date
    lines: AsyncIterator[BillLine]
    summary: BillSummary = field(default_factory=BillSummary)


class PaymentGateway(abc.ABC):
    @abc.abstractmethod
    async def create_native(self, order: NativeOrder) -> NativeCheckout:
        """Place (or fetch again) the Native trade; raises TradeAlreadyPaid, TradeClosed, GatewayError."""

    @abc.abstractmethod
    async def query(self, out_trade_no: str) -> Trade:
        """The trade now; raises TradeNotFound when WeChat has none."""

    @abc.abstractmethod
    async def close(self, out_trade_no: str) -> None:
        """Close the unpaid trade; raises TradeAlreadyPaid, TradeClosed, TradeNotFound, CloseTooEarly."""

    @abc.abstractmethod
    def read_notify(self, body: bytes, headers: Mapping[str, str]) -> Notice:
        """Parse and verify a payment notify; raises NotifyRejected with the reason for WeChat."""

    @abc.abstractmethod
    async def refund(self, request: RefundRequest) -> RefundState:
        """Ask WeChat to give money back (its state right after: usually
        processing). Raises RefundRefused when WeChat says no for a reason a
        retry cannot fix, GatewayUnavailable when the same request (same
        out_refund_no) must be sent again."""

    @abc.abstractmethod
    async def query_refund(self, out_refund_no: str) -> RefundState:
        """The refund now; raises RefundNotFound when WeChat has none."""

    @abc.abstractmethod
    def read_refund_notify(self, body: bytes, headers: Mapping[str, str]) -> RefundState:
        """Parse, verify and decrypt a refund notify; raises NotifyRejected."""

    @abc.abstractmethod
    async def download_bill(self, date: dt.date) -> Bill:
        """The trade bill (ALL) of a Beijing-time day. Raises BillNotReady when
        WeChat has none for that day (yet), GatewayError otherwise."""
