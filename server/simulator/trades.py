"""The simulator's book of trades and WeChat's rules for them.

Kept in memory: the simulator stands in for WeChat during development and
tests, and a restart of it is WeChat losing its memory, not ours.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

NOTPAY, USERPAYING, SUCCESS, CLOSED = "NOTPAY", "USERPAYING", "SUCCESS", "CLOSED"
TRADE_STATE_DESC = {
    NOTPAY: "订单未支付", USERPAYING: "用户支付中", SUCCESS: "支付成功", CLOSED: "已关闭",
}
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

    @property
    def total_fee(self) -> int:
        return int(self.request["total_fee"])


class TradeBook:
    def __init__(self, close_min_age_seconds: float = 300.0):
        self.close_min_age_seconds = close_min_age_seconds
        self._by_out_trade_no: dict[str, Trade] = {}
        self._by_code_url: dict[str, Trade] = {}

    def unified_order(self, request: dict[str, str], api: str = V2) -> Trade:
        no = request["out_trade_no"]
        trade = self._by_out_trade_no.get(no)
        if trade is not None:
            if trade.state == SUCCESS:
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
        if trade.state == SUCCESS:
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
        trade.transaction_id = time.strftime("4200%Y%m%d") + str(secrets.randbelow(10**18)).zfill(18)
        trade.time_end = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 8 * 3600))
        return trade

    def _check_payable(self, trade: Trade) -> None:
        if trade.state == SUCCESS:
            raise TradeError("ORDERPAID", "该订单已支付")
        if trade.state == CLOSED:
            raise TradeError("ORDERCLOSED", "该订单已关闭")
        beijing_now = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 8 * 3600))
        if trade.time_expire and beijing_now > trade.time_expire:
            raise TradeError("ORDER_EXPIRED", "二维码已过期")
