"""WeChat Pay v2 client for Native checkout: unifiedorder, orderquery,
closeorder, and refunds (secapi/pay/refund, refundquery).

One aiohttp session for the process; every request is signed with the
configured sign type and every answer's signature is verified before a field
of it is trusted. Over https every call goes out with the client's TLS
context (tls.py): the merchant certificate WeChat demands for secapi/ calls,
and the CAs trusted for the API base.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from server.gateway.abc import BEIJING
from server.gateway.errors import WxPayBadResponse, WxPayError, WxPayReturnFail, WxPayUnreachable, v2_error
from server.gateway.wxpay_v2 import signing, xmlcodec
from server.gateway.wxpay_v2.tls import ClientTLS

log = logging.getLogger(__name__)

# A day's bill can be large: no cap on the whole exchange, only on silence.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)


def wx_time(when: dt.datetime) -> str:
    """WeChat's ``yyyyMMddHHmmss`` in Beijing time."""
    return when.astimezone(BEIJING).strftime("%Y%m%d%H%M%S")


def parse_wx_time(text: str) -> dt.datetime:
    """``yyyyMMddHHmmss``, Beijing time. Sliced rather than strptime'd: every
    notify carries one, and strptime cost 1 % of a notify's CPU."""
    if len(text) != 14 or not text.isascii() or not text.isdigit():
        raise ValueError(f"not a WeChat time (yyyyMMddHHmmss): {text!r}")
    return dt.datetime(int(text[:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]),
                       int(text[12:]), tzinfo=BEIJING)


@dataclass(frozen=True)
class Merchant:
    appid: str
    mch_id: str
    key: str
    sign_type: str = signing.MD5


class WxPayClient:
    def __init__(self, session: aiohttp.ClientSession, api_base: str, merchant: Merchant,
                 timeout: float = 10.0, tls: ClientTLS | None = None):
        self._session = session
        self._api_base = api_base.rstrip("/")
        self.merchant = merchant
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tls = tls
        self._https = self._api_base.lower().startswith("https:")

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

    async def refund(self, *, out_refund_no: str, total_fee: int, refund_fee: int, out_trade_no: str = "",
                     transaction_id: str = "", refund_desc: str = "", notify_url: str = "") -> dict[str, str]:
        """Ask for a refund (the same out_refund_no again answers for the same refund);
        by transaction_id when given, else by out_trade_no."""
        if self._https and (self._tls is None or not self._tls.presents_certificate):
            # WeChat would refuse the handshake; say what is missing instead.
            raise WxPayError("NO_CLIENT_CERTIFICATE",
                             "secapi/pay/refund needs the merchant certificate over https: "
                             "set WXPAY_CERT_PATH and WXPAY_PRIVATE_KEY_PATH")
        by = {"transaction_id": transaction_id} if transaction_id else {"out_trade_no": out_trade_no}
        return await self._call("/secapi/pay/refund", {
            **by,
            "out_refund_no": out_refund_no,
            "total_fee": str(total_fee),
            "refund_fee": str(refund_fee),
            "refund_desc": refund_desc[:80],
            "notify_url": notify_url,
        }, refund=True)

    async def refund_query(self, out_refund_no: str) -> dict[str, str]:
        """The refund as WeChat sees it, as ``refund_status_0`` and friends."""
        return await self._call("/pay/refundquery", {"out_refund_no": out_refund_no}, refund=True)

    @contextlib.asynccontextmanager
    async def stream(self, path: str, params: dict[str, str]) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST a signed request whose answer is not the usual signed XML (downloadbill
        answers the bill itself): the open response, read as it comes. aiohttp's
        errors are the caller's to map."""
        async with self._session.post(self._api_base + path, data=self._signed_body(params),
                                      headers={"Content-Type": "text/xml; charset=utf-8"},
                                      timeout=STREAM_TIMEOUT, ssl=self._ssl()) as resp:
            yield resp

    def _signed_body(self, params: dict[str, str]) -> bytes:
        m = self.merchant
        return xmlcodec.render(signing.signed(
            {"appid": m.appid, "mch_id": m.mch_id, "nonce_str": signing.nonce(), **params}, m.key, m.sign_type))

    def _ssl(self) -> ssl.SSLContext | bool:
        return self._tls.context if self._tls is not None and self._https else True

    async def _call(self, path: str, params: dict[str, str], *, refund: bool = False) -> dict[str, str]:
        m = self.merchant
        url = self._api_base + path
        try:
            async with self._session.post(url, data=self._signed_body(params),
                                          headers={"Content-Type": "text/xml; charset=utf-8"},
                                          timeout=self._timeout, ssl=self._ssl()) as resp:
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
            raise v2_error(reply.get("err_code") or "UNKNOWN", reply.get("err_code_des", ""), reply, refund=refund)
        return reply
