"""WeChat's side of the notify: build signed notify XML and POST it."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

import settings as settings_mod
from server.gateway.wxpay_v2 import signing, xmlcodec


def notify_fields(order: dict[str, Any], *, transaction_id: str = "4200000000202611270000000001",
                  **overrides: str) -> dict[str, str]:
    fields = {
        "return_code": "SUCCESS",
        "appid": settings_mod.SANDBOX_APPID,
        "mch_id": settings_mod.SANDBOX_MCH_ID,
        "nonce_str": signing.nonce(),
        "result_code": "SUCCESS",
        "openid": "oTestOpenId",
        "trade_type": "NATIVE",
        "bank_type": "CMC",
        "total_fee": str(order["pay_money"]),
        "cash_fee": str(order["pay_money"]),
        "fee_type": "CNY",
        "transaction_id": transaction_id,
        "out_trade_no": order["id"],
        "time_end": time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 8 * 3600)),
    }
    fields.update(overrides)
    return fields


def coupon_fields(order: dict[str, Any]) -> dict[str, str]:
    """Two coupons (one CASH, one NO_CASH) paid part of the order, the shape WeChat
    documents for the payment notify (coupon_*_N numbered from 0)."""
    total = int(order["pay_money"])
    return {"cash_fee": str(total - 3), "cash_fee_type": "CNY", "settlement_total_fee": str(total - 2),
            "coupon_fee": "3", "coupon_count": "2",
            "coupon_type_0": "CASH", "coupon_id_0": "2000000000276621044", "coupon_fee_0": "1",
            "coupon_type_1": "NO_CASH", "coupon_id_1": "2000000000276621045", "coupon_fee_1": "2",
            "attach": "paypush", "device_info": "WEB"}


def signed_notify(order: dict[str, Any], key: str = settings_mod.SANDBOX_KEY,
                  sign_type: str = "MD5", declare: bool | None = None, **overrides: str) -> bytes:
    """The notify, signed. ``declare`` says whether it carries sign_type; by default
    as :func:`signing.signed` does (only for HMAC-SHA256). WeChat leaves it out of
    HMAC-SHA256 notifies (binarywang/WxJava#1585)."""
    fields = notify_fields(order, **overrides)
    if declare is None:
        return xmlcodec.render(signing.signed(fields, key, sign_type))
    fields = {k: v for k, v in fields.items() if v}
    if declare:
        fields["sign_type"] = sign_type
    return xmlcodec.render({**fields, "sign": signing.sign(fields, key, sign_type)})


async def post_notify(base_url: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.request(
            method, base_url.rstrip("/") + "/wxpay/notify", data=body,
            headers={"Content-Type": "text/xml"}) as resp:
        raw = await resp.read()
        return resp.status, xmlcodec.parse(raw)
