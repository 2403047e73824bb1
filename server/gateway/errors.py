"""What a payment gateway can fail with, the same for every WeChat Pay API
version: the domain decides by kind (``isinstance``), never by a version's
error code, and ``retryable`` says whether asking again later can help."""

from __future__ import annotations


class GatewayError(Exception):
    """WeChat refused the call, or could not be asked. ``code`` is WeChat's own
    error code (or ours: UNREACHABLE, BAD_RESPONSE), for logs and metrics."""

    retryable = False

    def __init__(self, code: str, message: str = "", response: dict[str, str] | None = None):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.response = response or {}

    @property
    def err_code(self) -> str:  # WeChat Pay v2's name for it
        return self.code


class TradeNotFound(GatewayError):
    """WeChat has no trade for this out_trade_no (the page never asked for a QR)."""


class TradeAlreadyPaid(GatewayError):
    """The trade is paid: it cannot be placed again, nor closed."""


class TradeClosed(GatewayError):
    """The trade was closed: it cannot be paid any more."""


class CloseTooEarly(GatewayError):
    """WeChat will not close a trade this young yet; ask again in a while."""


class RefundRefused(GatewayError):
    """WeChat will not make this refund (more than is left, a trade not paid or
    too old, a bad request): asking again cannot help."""


class RefundNotFound(GatewayError):
    """WeChat has no refund with this out_refund_no."""


class BillNotReady(GatewayError):
    """WeChat has no bill for that day: not published yet (bills come the next
    morning), or a day with no trade at all ("No Bill Exist")."""


class GatewayUnavailable(GatewayError):
    """Unreachable, a system error, a rate limit or an answer we cannot trust:
    the same call can succeed later."""

    retryable = True


class NotifyRejected(Exception):
    """A notify that must not be believed or cannot be recorded; the reason goes
    back to WeChat, which sends it again later."""


# -- WeChat Pay API v2's names for the same failures ------------------------------

class WxPayError(GatewayError):
    """A v2 call answered ``result_code=FAIL`` with an error code we do not type."""


class WxPayUnreachable(WxPayError, GatewayUnavailable):
    """Connection refused, timed out or answered with a non-200 status."""

    def __init__(self, message: str):
        super().__init__("UNREACHABLE", message)


class WxPayReturnFail(WxPayError, GatewayUnavailable):
    """``return_code=FAIL``: the request itself was refused (signature, appid, format)."""

    def __init__(self, message: str, response: dict[str, str]):
        super().__init__("RETURN_FAIL", message, response)


class WxPayBadResponse(WxPayError, GatewayUnavailable):
    """The answer was not valid XML or its signature did not verify."""

    def __init__(self, message: str):
        super().__init__("BAD_RESPONSE", message)


class WxPayTradeNotFound(WxPayError, TradeNotFound):
    pass


class WxPayTradeAlreadyPaid(WxPayError, TradeAlreadyPaid):
    pass


class WxPayTradeClosed(WxPayError, TradeClosed):
    pass


class WxPayCloseTooEarly(WxPayError, CloseTooEarly):
    pass


class WxPayBusy(WxPayError, GatewayUnavailable):
    pass


class WxPayRefundRefused(WxPayError, RefundRefused):
    pass


class WxPayRefundNotFound(WxPayError, RefundNotFound):
    pass


_V2_KINDS: dict[str, type[WxPayError]] = {
    "ORDERNOTEXIST": WxPayTradeNotFound,
    "ORDERPAID": WxPayTradeAlreadyPaid,
    "ORDERCLOSED": WxPayTradeClosed,
    "CLOSE_TOO_EARLY": WxPayCloseTooEarly,  # the simulator's; WeChat documents no code for it
    "SYSTEMERROR": WxPayBusy,
    "FREQUENCY_LIMITED": WxPayBusy,
}


# The refund calls (secapi/pay/refund, pay/refundquery) answer with codes of
# their own, and some words mean something else there: PARAM_ERROR or ERROR
# on a refund is "this refund will not be made", not a fault of ours to page
# about. NOTENOUGH is WeChat's "the merchant's refundable balance is short"
# (a person tops it up, then the same out_refund_no can be sent again):
# refused for the domain, which must not retry it on its own.
_V2_REFUND_KINDS: dict[str, type[WxPayError]] = {
    **_V2_KINDS,
    "NOTENOUGH": WxPayRefundRefused,
    "TRADE_STATE_ERROR": WxPayRefundRefused,
    "ERROR": WxPayRefundRefused,
    "INVALID_TRANSACTIONID": WxPayRefundRefused,
    "PARAM_ERROR": WxPayRefundRefused,
    "TRADE_OVERDUE": WxPayRefundRefused,
    "USER_ACCOUNT_ABNORMAL": WxPayRefundRefused,
    "ORDERNOTEXIST": WxPayRefundRefused,  # nothing to refund from
    "BIZERR_NEED_RETRY": WxPayBusy,
    "INVALID_REQ_TOO_MUCH": WxPayBusy,  # WeChat's rate limit on failing refund calls
    "REFUNDNOTEXIST": WxPayRefundNotFound,
}


def v2_error(err_code: str, message: str, response: dict[str, str], *, refund: bool = False) -> WxPayError:
    """The typed error for a v2 ``err_code``; ``refund``: of a refund call."""
    kinds = _V2_REFUND_KINDS if refund else _V2_KINDS
    return kinds.get(err_code, WxPayError)(err_code, message, response)
