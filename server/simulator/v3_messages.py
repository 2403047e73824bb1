"""What the v3 simulator says, in WeChat's shapes: trades as a query answers
them and a notify carries them, WeChat's signature headers, the notify itself."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from server.simulator import v3_crypto
from server.simulator.trades import SUCCESS, TRADE_STATE_DESC, Trade
from server.simulator.v3_keys import SIGNATURE_TYPE, V3Keys

BEIJING = dt.timezone(dt.timedelta(hours=8))


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
    if trade.state == SUCCESS:
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
