"""WeChat's side of the notify: build signed notify XML and POST it."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

import settings as settings_mod
from server.wxpay import signing, xmlcodec


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


def signed_notify(order: dict[str, Any], key: str = settings_mod.SANDBOX_KEY,
                  sign_type: str = "MD5", **overrides: str) -> bytes:
    return xmlcodec.render(signing.signed(notify_fields(order, **overrides), key, sign_type))


async def post_notify(base_url: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.request(
            method, base_url.rstrip("/") + "/wxpay/notify", data=body,
            headers={"Content-Type": "text/xml"}) as resp:
        raw = await resp.read()
        return resp.status, xmlcodec.parse(raw)
