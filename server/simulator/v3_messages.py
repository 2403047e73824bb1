"""What the v3 simulator says, in WeChat's shapes: trades as a query answers
them and a notify carries them, WeChat's signature headers, the notify itself."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from server.simulator import v3_crypto
from server.simulator.trades import (
    REFUND_CHANGE,
    REFUND_CLOSED,
    REFUND_PROCESSING,
    REFUND_SUCCESS,
    TRADE_STATE_DESC,
    Refund,
    Trade,
)
from server.simulator.v3_keys import SIGNATURE_TYPE, V3Keys

BEIJING = dt.timezone(dt.timedelta(hours=8))
# The book keeps a refund's status in v2's words; v3 says two of them otherwise.
V3_REFUND_STATUS = {REFUND_PROCESSING: "PROCESSING", REFUND_SUCCESS: "SUCCESS", REFUND_CLOSED: "CLOSED",
                    REFUND_CHANGE: "ABNORMAL"}
REFUND_EVENTS = {REFUND_SUCCESS: ("REFUND.SUCCESS", "退款成功"), REFUND_CLOSED: ("REFUND.CLOSED", "退款关闭"),
                 REFUND_CHANGE: ("REFUND.ABNORMAL", "退款异常")}
USER_RECEIVED_ACCOUNT = "支付用户零钱"


def rfc3339(epoch: float) -> str:
    """WeChat's time format: Beijing time with its offset, to the second."""
    return dt.datetime.fromtimestamp(int(epoch), BEIJING).isoformat()


def beijing_compact(value: str) -> str:
    """RFC 3339 -> the TradeBook's yyyyMMddHHmmss Beijing time."""
    when = dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        raise ValueError("time without an offset")
    return when.astimezone(BEIJING).strftime("%Y%m%d%H%M%S")


def _success_time(trade: Trade) -> str:
    paid = dt.datetime.strptime(trade.time_end, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING)
    return paid.isoformat()


def transaction(keys: V3Keys, trade: Trade, coupons: int = 0) -> dict[str, Any]:
    """A trade as v3's query answers it and as a notify's resource carries it."""
    answer: dict[str, Any] = {
        "appid": trade.request.get("appid", keys.appid), "mchid": keys.mchid,
        "out_trade_no": trade.out_trade_no, "trade_state": trade.state,
        "trade_state_desc": TRADE_STATE_DESC[trade.state], "attach": trade.request.get("attach", ""),
        "amount": {"total": trade.total_fee, "currency": "CNY"},
    }
    if trade.paid:
        paid_in_coupons = max(0, min(coupons, trade.total_fee - 1))
        answer.update(transaction_id=trade.transaction_id, trade_type="NATIVE", bank_type="OTHERS",
                      success_time=_success_time(trade), payer={"openid": trade.openid})
        answer["amount"].update(payer_total=trade.total_fee - paid_in_coupons, payer_currency="CNY")
        if paid_in_coupons:
            answer["promotion_detail"] = [
                {"coupon_id": str(2000000000000000000 + i), "name": "simulated coupon", "scope": "GLOBAL",
                 "type": "NOCASH" if i % 2 else "CASH", "amount": 1, "currency": "CNY"}
                for i in range(paid_in_coupons)]
    return answer


def signed_headers(keys: V3Keys, body: bytes) -> dict[str, str]:
    """WeChat's signature headers over a body it sends (answer or notify)."""
    signer = keys.signer
    timestamp, nonce = str(int(time.time())), v3_crypto.new_nonce()
    return {"Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce, "Wechatpay-Serial": signer.serial,
            "Wechatpay-Signature": signer.sign(f"{timestamp}\n{nonce}\n{body.decode()}\n"),
            "Wechatpay-Signature-Type": SIGNATURE_TYPE}


def notify_message(keys: V3Keys, trade: Trade, coupons: int = 0) -> tuple[bytes, dict[str, str]]:
    """A TRANSACTION.SUCCESS notify as WeChat POSTs it: body and headers
    (``coupons``: the shopper paid that many fen with coupons)."""
    resource = json.dumps(transaction(keys, trade, coupons), ensure_ascii=False)
    body = json.dumps({
        "id": trade.notify_id, "create_time": rfc3339(time.time()), "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
        "resource": {"original_type": "transaction",
                     **v3_crypto.encrypt(keys.apiv3_key, resource.encode(), "transaction")},
    }, ensure_ascii=False).encode()
    return body, {"Content-Type": "application/json", **signed_headers(keys, body)}


def refund(refund: Refund) -> dict[str, Any]:
    """A refund as ``/v3/refund/domestic/refunds`` answers it (create and query)."""
    answer: dict[str, Any] = {
        "refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
        "transaction_id": refund.transaction_id, "out_trade_no": refund.out_trade_no, "channel": "ORIGINAL",
        "user_received_account": USER_RECEIVED_ACCOUNT, "create_time": rfc3339(refund.created_at),
        "status": V3_REFUND_STATUS[refund.status], "funds_account": "AVAILABLE",
        "amount": {"total": refund.total_fee, "refund": refund.refund_fee, "from": [],
                   "payer_total": refund.total_fee, "payer_refund": refund.refund_fee,
                   "settlement_refund": refund.refund_fee, "settlement_total": refund.total_fee,
                   "discount_refund": 0, "currency": "CNY", "refund_fee": 0},
        "promotion_detail": [],
    }
    if refund.success_time is not None:
        answer["success_time"] = rfc3339(refund.success_time)
    return answer


def refund_notify_resource(keys: V3Keys, refund: Refund) -> dict[str, Any]:
    """What a REFUND.* notify's resource decrypts to."""
    resource: dict[str, Any] = {
        "mchid": keys.mchid, "out_trade_no": refund.out_trade_no, "transaction_id": refund.transaction_id,
        "out_refund_no": refund.out_refund_no, "refund_id": refund.refund_id,
        "refund_status": V3_REFUND_STATUS[refund.status], "user_received_account": USER_RECEIVED_ACCOUNT,
        "amount": {"total": refund.total_fee, "refund": refund.refund_fee, "payer_total": refund.total_fee,
                   "payer_refund": refund.refund_fee},
    }
    if refund.success_time is not None:
        resource["success_time"] = rfc3339(refund.success_time)
    return resource


def refund_notify_message(keys: V3Keys, refund: Refund) -> tuple[bytes, dict[str, str]]:
    """A REFUND.SUCCESS / .ABNORMAL / .CLOSED notify as WeChat POSTs it: body and headers."""
    event_type, summary = REFUND_EVENTS[refund.status]
    resource = json.dumps(refund_notify_resource(keys, refund), ensure_ascii=False)
    body = json.dumps({
        "id": refund.notify_id, "create_time": rfc3339(time.time()), "resource_type": "encrypt-resource",
        "event_type": event_type, "summary": summary,
        "resource": {"original_type": "refund", **v3_crypto.encrypt(keys.apiv3_key, resource.encode(), "refund")},
    }, ensure_ascii=False).encode()
    return body, {"Content-Type": "application/json", **signed_headers(keys, body)}
