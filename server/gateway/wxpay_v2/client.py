"""WeChat Pay v2 client for Native checkout: unifiedorder, orderquery, closeorder.

One aiohttp session for the process; every request is signed with the
configured sign type and every answer's signature is verified before a field
of it is trusted.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import aiohttp

from server.gateway.errors import WxPayBadResponse, WxPayReturnFail, WxPayUnreachable, v2_error
from server.gateway.wxpay_v2 import signing, xmlcodec

log = logging.getLogger(__name__)

CHINA_TZ = dt.timezone(dt.timedelta(hours=8))


def wx_time(when: dt.datetime) -> str:
    """WeChat's ``yyyyMMddHHmmss`` in Beijing time."""
    return when.astimezone(CHINA_TZ).strftime("%Y%m%d%H%M%S")


def parse_wx_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=CHINA_TZ)


@dataclass(frozen=True)
class Merchant:
    appid: str
    mch_id: str
    key: str
    sign_type: str = signing.MD5


class WxPayClient:
    def __init__(self, session: aiohttp.ClientSession, api_base: str, merchant: Merchant,
                 timeout: float = 10.0):
        self._session = session
        self._api_base = api_base.rstrip("/")
        self.merchant = merchant
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def unified_order(self, *, out_trade_no: str, body: str, total_fee: int,
                            notify_url: str, product_id: str, time_expire: dt.datetime,
                            client_ip: str = "127.0.0.1") -> dict[str, str]:
        """Create (or re-fetch) a NATIVE trade; the answer carries ``code_url``."""
        reply = await self._call("/pay/unifiedorder", {
            "body": body[:128],
            "out_trade_no": out_trade_no,
            "total_fee": str(total_fee),
            "spbill_create_ip": client_ip,
            "notify_url": notify_url,
            "trade_type": "NATIVE",
            "product_id": product_id,
            "time_expire": wx_time(time_expire),
        })
        if not reply.get("code_url"):
            raise WxPayBadResponse("unifiedorder answered without code_url")
        return reply

    async def order_query(self, out_trade_no: str) -> dict[str, str]:
        """The trade as WeChat sees it; ``trade_state`` is SUCCESS, NOTPAY, CLOSED, ..."""
        return await self._call("/pay/orderquery", {"out_trade_no": out_trade_no})

    async def close_order(self, out_trade_no: str) -> None:
        await self._call("/pay/closeorder", {"out_trade_no": out_trade_no})

    async def _call(self, path: str, params: dict[str, str]) -> dict[str, str]:
        m = self.merchant
        request = signing.signed(
            {"appid": m.appid, "mch_id": m.mch_id, "nonce_str": signing.nonce(), **params},
            m.key, m.sign_type)
        url = self._api_base + path
        try:
            async with self._session.post(url, data=xmlcodec.render(request),
                                          headers={"Content-Type": "text/xml; charset=utf-8"},
                                          timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise WxPayUnreachable(f"{path} answered HTTP {resp.status}")
                body = await resp.content.read(1 << 20)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise WxPayUnreachable(f"{path}: {type(exc).__name__} {exc}".strip()) from None
        try:
            reply = xmlcodec.parse(body)
        except xmlcodec.MalformedXML as exc:
            raise WxPayBadResponse(f"{path}: {exc}") from None
        if reply.get("return_code") != "SUCCESS":
            raise WxPayReturnFail(reply.get("return_msg", "return_code FAIL"), reply)
        if not signing.verify(reply, m.key, signing.accepted_sign_types(m.sign_type)):
            raise WxPayBadResponse(f"{path}: answer signature does not verify")
        if reply.get("appid") != m.appid or reply.get("mch_id") != m.mch_id:
            raise WxPayBadResponse(f"{path}: answer is for another merchant")
        if reply.get("result_code") != "SUCCESS":
            raise v2_error(reply.get("err_code") or "UNKNOWN", reply.get("err_code_des", ""), reply)
        return reply
