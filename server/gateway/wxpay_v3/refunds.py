"""What WeChat Pay v3's refund JSON says, as the seam's RefundState: the
answer of ``POST /v3/refund/domestic/refunds`` and of the query by
out_refund_no (one shape), and the decrypted resource of a ``REFUND.*`` notify."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.gateway.abc import REFUND_ABNORMAL, REFUND_CLOSED, REFUND_PROCESSING, REFUND_SUCCESS, RefundState
from server.gateway.errors import GatewayUnavailable, NotifyRejected
from server.gateway.wxpay_v3.client import parse_rfc3339

# The answers' ``status`` and the notify's ``refund_status`` -> ours.
STATUSES = {
    "SUCCESS": REFUND_SUCCESS,
    "PROCESSING": REFUND_PROCESSING,
    "CLOSED": REFUND_CLOSED,
    "ABNORMAL": REFUND_ABNORMAL,
}
# A notify's event_type -> the refund_status its resource must carry.
EVENTS = {"REFUND.SUCCESS": "SUCCESS", "REFUND.ABNORMAL": "ABNORMAL", "REFUND.CLOSED": "CLOSED"}


def _fen(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _id(value: object, limit: int) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def _time(value: object) -> float | None:
    try:
        return parse_rfc3339(value).timestamp() if isinstance(value, str) else None
    except ValueError:
        return None


def _state(doc: Mapping[str, Any], status_field: str) -> tuple[RefundState | None, str]:
    """The refund ``doc`` describes, or None and what is wrong with it."""
    out_refund_no, out_trade_no = _id(doc.get("out_refund_no"), 64), _id(doc.get("out_trade_no"), 32)
    refund_id = _id(doc.get("refund_id"), 32)
    if out_refund_no is None or out_trade_no is None or refund_id is None:
        return None, "out_refund_no, out_trade_no or refund_id missing"
    amount = doc.get("amount")
    refund = _fen(amount.get("refund")) if isinstance(amount, dict) else None
    if refund is None:
        return None, "amount.refund is not an amount in fen"
    status = STATUSES.get(str(doc.get(status_field, "")))
    if status is None:
        return None, f"{status_field} {str(doc.get(status_field))[:16]!r} is not a refund state"
    success_time = None
    if status == REFUND_SUCCESS:
        success_time = _time(doc.get("success_time"))
        if success_time is None:
            return None, f"SUCCESS without an RFC 3339 success_time ({str(doc.get('success_time'))[:32]!r})"
    return RefundState(out_refund_no, out_trade_no, refund_id, refund, status, success_time), ""


def from_answer(answer: Mapping[str, Any], out_refund_no: str) -> RefundState:
    """Our refund in a (verified) refund or query answer."""
    state, wrong = _state(answer, "status")
    if state is None:
        raise GatewayUnavailable("BAD_RESPONSE", f"refund {out_refund_no}: {wrong}")
    if state.out_refund_no != out_refund_no:
        raise GatewayUnavailable("BAD_RESPONSE", f"refund {out_refund_no}: answered for {state.out_refund_no!r}")
    return state


def from_notify(event: str, resource: Mapping[str, Any], mchid: str) -> RefundState:
    """The refund a (verified, decrypted) ``REFUND.*`` notify reports."""
    if resource.get("mchid") != mchid:
        raise NotifyRejected("mchid is not ours")
    state, wrong = _state(resource, "refund_status")
    if state is None:
        raise NotifyRejected(f"refund resource: {wrong}")
    if EVENTS.get(event) != resource.get("refund_status"):
        raise NotifyRejected(f"{event[:40]} carries refund_status {str(resource.get('refund_status'))[:16]!r}")
    return state
