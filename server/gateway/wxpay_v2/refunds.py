"""What WeChat Pay v2's refund answers say, as the seam's RefundState.

``secapi/pay/refund`` accepts a refund (no state: it is processing until
WeChat says otherwise); ``pay/refundquery`` lists the trade's refunds with a
``_n`` suffix per refund, and queried by out_refund_no it lists that one.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

from server.gateway.abc import (
    BEIJING,
    REFUND_ABNORMAL,
    REFUND_CLOSED,
    REFUND_PROCESSING,
    REFUND_SUCCESS,
    RefundRequest,
    RefundState,
)
from server.gateway.errors import WxPayBadResponse

# WeChat's refund_status words (query and notify) -> ours.
STATUSES = {
    "SUCCESS": REFUND_SUCCESS,
    "PROCESSING": REFUND_PROCESSING,
    "REFUNDCLOSE": REFUND_CLOSED,
    "CHANGE": REFUND_ABNORMAL,  # 退款异常: the money could not reach the payer
}
_FEN = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() takes "²" and "١"


def fen(text: str | None) -> int | None:
    """An amount in fen as WeChat writes it, or None when it is not one."""
    return int(text) if text is not None and _FEN.fullmatch(text) else None


def parse_refund_time(text: str) -> float:
    """``yyyy-MM-dd HH:mm:ss``, Beijing time, as epoch seconds; ValueError when it is not."""
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING).timestamp()


def accepted(reply: Mapping[str, str], request: RefundRequest) -> RefundState:
    """The refund ``secapi/pay/refund`` accepted (its signature already verified)."""
    where = f"refund {request.out_refund_no}"
    if reply.get("out_refund_no") != request.out_refund_no:
        raise WxPayBadResponse(f"{where}: answered for refund {reply.get('out_refund_no', '')[:64]!r}")
    refund_id, amount = reply.get("refund_id", ""), fen(reply.get("refund_fee"))
    if not refund_id or amount is None:
        raise WxPayBadResponse(f"{where}: accepted without refund_id or refund_fee")
    return RefundState(request.out_refund_no, reply.get("out_trade_no") or request.out_trade_no, refund_id,
                       amount, REFUND_PROCESSING)


def queried(reply: Mapping[str, str], out_refund_no: str) -> RefundState:
    """Our refund in a ``pay/refundquery`` answer (its signature already verified)."""
    where = f"refundquery {out_refund_no}"
    count = fen(reply.get("refund_count"))
    if count is None:
        raise WxPayBadResponse(f"{where}: refund_count missing")
    index = next((n for n in range(min(count, 50)) if reply.get(f"out_refund_no_{n}") == out_refund_no), None)
    if index is None:
        raise WxPayBadResponse(f"{where}: the answer lists no such refund")
    status = STATUSES.get(reply.get(f"refund_status_{index}", ""))
    refund_id, amount = reply.get(f"refund_id_{index}", ""), fen(reply.get(f"refund_fee_{index}"))
    if status is None or not refund_id or amount is None:
        raise WxPayBadResponse(f"{where}: refund_status, refund_id or refund_fee missing or unknown")
    success_time = None
    if status == REFUND_SUCCESS:
        try:
            success_time = parse_refund_time(reply.get(f"refund_success_time_{index}", ""))
        except ValueError:
            raise WxPayBadResponse(f"{where}: SUCCESS without a refund_success_time") from None
    return RefundState(out_refund_no, reply.get("out_trade_no", ""), refund_id, amount, status, success_time)
