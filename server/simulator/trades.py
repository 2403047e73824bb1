"""The simulator's book of trades and WeChat's rules for them.

Kept in memory: the simulator stands in for WeChat during development and
tests, and a restart of it is WeChat losing its memory, not ours.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass, field

NOTPAY, USERPAYING, SUCCESS, CLOSED, REFUND = "NOTPAY", "USERPAYING", "SUCCESS", "CLOSED", "REFUND"
TRADE_STATE_DESC = {
    NOTPAY: "订单未支付", USERPAYING: "用户支付中", SUCCESS: "支付成功", CLOSED: "已关闭",
    REFUND: "转入退款",
}
# A refunded trade was paid all the same: it cannot be paid, placed or closed again.
PAID_STATES = (SUCCESS, REFUND)

# A refund's status in v2's words (v3 says CLOSED for REFUNDCLOSE, ABNORMAL for CHANGE).
REFUND_PROCESSING, REFUND_SUCCESS, REFUND_CLOSED, REFUND_CHANGE = "PROCESSING", "SUCCESS", "REFUNDCLOSE", "CHANGE"
# The control knob's outcomes -> the status a refund ends in.
REFUND_OUTCOMES = {"success": REFUND_SUCCESS, "abnormal": REFUND_CHANGE, "closed": REFUND_CLOSED}
# Fields whose change makes a repeated unifiedorder a different order.
IDENTITY_FIELDS = ("body", "total_fee", "trade_type", "product_id", "notify_url")


class TradeError(Exception):
    def __init__(self, err_code: str, err_code_des: str):
        super().__init__(f"{err_code}: {err_code_des}")
        self.err_code = err_code
        self.err_code_des = err_code_des


V2, V3 = "v2", "v3"


@dataclass
class Trade:
    """One trade, whichever API placed it. ``request`` holds v2's field names
    (a v3 order is translated into them), so WeChat's rules are written once;
    ``api`` says which version placed it, hence the format of its notifies."""

    out_trade_no: str
    request: dict[str, str]
    created_at: float
    code_url: str
    prepay_id: str
    time_expire: str = ""  # Beijing time, yyyyMMddHHmmss
    api: str = V2
    state: str = NOTPAY
    transaction_id: str = ""
    time_end: str = ""
    openid: str = field(default_factory=lambda: "oSim" + secrets.token_hex(12))
    notify_id: str = field(default_factory=lambda: "EV-" + secrets.token_hex(16))  # v3: same id on every retry
    refunds: list[Refund] = field(default_factory=list)
    # The shopper paid the same order again: each its own transaction_id, same amount.
    extra_payments: list[Payment] = field(default_factory=list)

    @property
    def total_fee(self) -> int:
        return int(self.request["total_fee"])

    @property
    def paid(self) -> bool:
        return self.state in PAID_STATES


@dataclass(frozen=True)
class Payment:
    """A further transaction on an already paid trade (a duplicate payment)."""

    transaction_id: str
    time_end: str
    notify_id: str


@dataclass
class Refund:
    """One refund as WeChat keeps it: drawn on one transaction of one trade."""

    out_refund_no: str
    refund_id: str
    out_trade_no: str
    transaction_id: str
    total_fee: int   # the amount of the transaction it draws on
    refund_fee: int
    api: str
    notify_url: str
    reason: str
    outcome: str     # the status it will end in (REFUND_SUCCESS | REFUND_CHANGE | REFUND_CLOSED)
    created_at: float = field(default_factory=time.time)
    status: str = REFUND_PROCESSING
    success_time: float | None = None
    notify_id: str = field(default_factory=lambda: "EV-" + secrets.token_hex(16))

    def settle(self) -> None:
        """Processing is over: the refund reaches the outcome chosen when it was made."""
        if self.status != REFUND_PROCESSING:
            return
        self.status = self.outcome
        if self.outcome == REFUND_SUCCESS:
            self.success_time = time.time()


def _transaction_id() -> str:
    return time.strftime("4200%Y%m%d") + str(secrets.randbelow(10**18)).zfill(18)


def _beijing_compact_now() -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 8 * 3600))


class TradeBook:
    def __init__(self, close_min_age_seconds: float = 300.0):
        self.close_min_age_seconds = close_min_age_seconds
        self._by_out_trade_no: dict[str, Trade] = {}
        self._by_code_url: dict[str, Trade] = {}
        self._by_transaction_id: dict[str, Trade] = {}
        self._refunds: dict[str, Refund] = {}

    def unified_order(self, request: dict[str, str], api: str = V2) -> Trade:
        no = request["out_trade_no"]
        trade = self._by_out_trade_no.get(no)
        if trade is not None:
            if trade.paid:
                raise TradeError("ORDERPAID", "该订单已支付")
            if trade.state == CLOSED:
                raise TradeError("ORDERCLOSED", "该订单已关闭")
            if any(trade.request.get(f) != request.get(f) for f in IDENTITY_FIELDS):
                raise TradeError("INVALID_REQUEST", "201 商户订单号重复")
            return trade  # WeChat hands back the same code_url for the same order
        pr = secrets.token_urlsafe(12)
        trade = Trade(
            out_trade_no=no,
            request=dict(request),
            created_at=time.time(),
            code_url=f"weixin://wxpay/bizpayurl?pr={pr}",
            prepay_id="wx" + secrets.token_hex(14),
            time_expire=request.get("time_expire", ""),
            api=api,
        )
        self._by_out_trade_no[no] = trade
        self._by_code_url[trade.code_url] = trade
        return trade

    def get(self, out_trade_no: str) -> Trade:
        trade = self._by_out_trade_no.get(out_trade_no)
        if trade is None:
            raise TradeError("ORDERNOTEXIST", "此交易订单号不存在")
        return trade

    def by_code_url(self, code_url: str) -> Trade:
        trade = self._by_code_url.get(code_url)
        if trade is None:
            raise TradeError("CODE_URL_UNKNOWN", "二维码无效")
        return trade

    def close(self, out_trade_no: str) -> Trade:
        trade = self.get(out_trade_no)
        if trade.paid:
            raise TradeError("ORDERPAID", "订单已支付，不能发起关单")
        if trade.state == CLOSED:
            raise TradeError("ORDERCLOSED", "订单已关闭，无法重复关闭")
        if time.time() - trade.created_at < self.close_min_age_seconds:
            # WeChat: "订单生成后不能马上调用关单接口，最短调用时间间隔为5分钟"
            raise TradeError("CLOSE_TOO_EARLY", "订单生成后不能马上调用关单接口")
        trade.state = CLOSED
        return trade

    def scan(self, code_url: str) -> Trade:
        """The shopper scanned the QR and is looking at the amount."""
        trade = self.by_code_url(code_url)
        self._check_payable(trade)
        trade.state = USERPAYING
        return trade

    def pay(self, code_url: str) -> Trade:
        """The shopper entered the password: the trade succeeds."""
        trade = self.by_code_url(code_url)
        self._check_payable(trade)
        trade.state = SUCCESS
        trade.transaction_id = _transaction_id()
        trade.time_end = _beijing_compact_now()
        self._by_transaction_id[trade.transaction_id] = trade
        return trade

    def pay_again(self, code_url: str) -> Trade:
        """The shopper pays an already paid trade once more (WeChat lets a stale QR
        or a second device do it): a new transaction of the same amount. Answers
        the trade as that payment's notify describes it."""
        trade = self.by_code_url(code_url)
        if not trade.paid:
            return self.pay(code_url)
        payment = Payment(_transaction_id(), _beijing_compact_now(), "EV-" + secrets.token_hex(16))
        trade.extra_payments.append(payment)
        self._by_transaction_id[payment.transaction_id] = trade
        return dataclasses.replace(trade, state=SUCCESS, transaction_id=payment.transaction_id,
                                   time_end=payment.time_end, notify_id=payment.notify_id)

    def refund(self, *, out_refund_no: str, total_fee: int, refund_fee: int, api: str,
               out_trade_no: str = "", transaction_id: str = "", notify_url: str = "", reason: str = "",
               outcome: str = REFUND_SUCCESS) -> tuple[Refund, bool]:
        """WeChat's refund rules; answers the refund and whether it is new (the same
        out_refund_no for the same amount is the same refund, not a second one)."""
        if refund_fee <= 0:
            raise TradeError("PARAM_ERROR", "退款金额必须大于0")
        existing = self._refunds.get(out_refund_no)
        if existing is not None:
            same_trade = existing.out_trade_no == out_trade_no or existing.transaction_id == transaction_id
            if not same_trade or (existing.refund_fee, existing.total_fee) != (refund_fee, total_fee):
                raise TradeError("PARAM_ERROR", "商户退款单号已存在，且与原退款单的订单或金额不一致")
            return existing, False
        trade = self._refundable_trade(out_trade_no, transaction_id)
        drawn_on = transaction_id if transaction_id else trade.transaction_id
        if total_fee != trade.total_fee:  # every transaction of a trade has the trade's amount
            raise TradeError("PARAM_ERROR", "订单金额total_fee与原交易不一致")
        refunded = sum(r.refund_fee for r in trade.refunds
                       if r.transaction_id == drawn_on and r.status != REFUND_CLOSED)
        if refunded + refund_fee > total_fee:
            raise TradeError("NOTENOUGH", "退款金额超过可退金额")
        refund = Refund(out_refund_no=out_refund_no, refund_id=_refund_id(), out_trade_no=trade.out_trade_no,
                        transaction_id=drawn_on, total_fee=total_fee, refund_fee=refund_fee, api=api,
                        notify_url=notify_url, reason=reason, outcome=outcome)
        trade.refunds.append(refund)
        self._refunds[out_refund_no] = refund
        if drawn_on == trade.transaction_id:  # a duplicate's refund leaves the order's own state alone
            trade.state = REFUND
        return refund, True

    def _refundable_trade(self, out_trade_no: str, transaction_id: str) -> Trade:
        # WeChat: transaction_id wins when both are given.
        if transaction_id:
            trade = self._by_transaction_id.get(transaction_id)
        elif out_trade_no:
            trade = self._by_out_trade_no.get(out_trade_no)
        else:
            raise TradeError("PARAM_ERROR", "transaction_id和out_trade_no必须填一个")
        if trade is None:
            raise TradeError("INVALID_TRANSACTIONID", "无效transaction_id，原交易不存在")
        if not trade.paid:
            raise TradeError("TRADE_STATE_ERROR", "订单状态错误，未支付的订单不能退款")
        return trade

    def get_refund(self, out_refund_no: str) -> Refund:
        refund = self._refunds.get(out_refund_no)
        if refund is None:
            raise TradeError("REFUNDNOTEXIST", "退款订单查询失败")
        return refund

    def refunds_of(self, *, out_trade_no: str = "", transaction_id: str = "") -> list[Refund]:
        """refundquery by order: every refund of the trade (of that transaction, when given)."""
        if transaction_id:
            trade = self._by_transaction_id.get(transaction_id)
            found = [r for r in trade.refunds if r.transaction_id == transaction_id] if trade else []
        else:
            trade = self._by_out_trade_no.get(out_trade_no)
            found = list(trade.refunds) if trade else []
        if not found:
            raise TradeError("REFUNDNOTEXIST", "退款订单查询失败")
        return found

    def by_refund_id(self, refund_id: str) -> Refund:
        for refund in self._refunds.values():
            if refund.refund_id == refund_id:
                return refund
        raise TradeError("REFUNDNOTEXIST", "退款订单查询失败")

    def all_trades(self) -> list[Trade]:
        """Every trade, in the order they were placed (the daily bill reads them)."""
        return list(self._by_out_trade_no.values())

    def all_refunds(self) -> list[Refund]:
        return list(self._refunds.values())

    def _check_payable(self, trade: Trade) -> None:
        if trade.paid:
            raise TradeError("ORDERPAID", "该订单已支付")
        if trade.state == CLOSED:
            raise TradeError("ORDERCLOSED", "该订单已关闭")
        beijing_now = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 8 * 3600))
        if trade.time_expire and beijing_now > trade.time_expire:
            raise TradeError("ORDER_EXPIRED", "二维码已过期")


def _refund_id() -> str:
    """29 digits like WeChat's refund ids (503...)."""
    return "503" + time.strftime("%Y%m%d") + str(secrets.randbelow(10**18)).zfill(18)
