"""WeChat Pay v2 ``POST /pay/downloadbill`` (pay.weixin.qq.com/doc/v2/merchant/4011987833).

A success is not XML: it is the bill itself, plain or (``tar_type=GZIP``) a
gzip file, unsigned. A failure is the usual ``<xml>`` with ``return_code``
FAIL: "No Bill Exist" (error_code 20002: no trade that day, or none yet) and
"Bill Creating" (WeChat builds yesterday's bill from 9:00, Beijing time) are
"not ready"; anything else is a failure, retryable when WeChat says its
system erred.
"""

from __future__ import annotations

import datetime as dt
import logging

import aiohttp

from server.gateway import bills
from server.gateway.abc import Bill
from server.gateway.errors import BillNotReady, GatewayError, GatewayUnavailable, WxPayBadResponse, WxPayUnreachable
from server.gateway.wxpay_v2 import xmlcodec
from server.gateway.wxpay_v2.client import WxPayClient

log = logging.getLogger(__name__)

PATH = "/pay/downloadbill"
MAX_ERROR_BODY = 64 * 1024
NOT_READY_MESSAGES = ("no bill exist", "bill creating")
NOT_READY_CODES = ("20002",)
TRANSIENT = ("systemerror", "20100", "compressgzip error")


async def download(client: WxPayClient, date: dt.date, *, gzip: bool = True) -> Bill:
    """The ALL bill of a Beijing-time day, spooled before this returns (the
    connection is done with); its lines are parsed as they are iterated."""
    params = {"bill_date": date.strftime("%Y%m%d"), "bill_type": "ALL"}
    if gzip:
        params["tar_type"] = "GZIP"
    where = f"downloadbill {date.isoformat()}"
    try:
        async with client.stream(PATH, params) as resp:
            if resp.status != 200:
                raise WxPayUnreachable(f"{where} answered HTTP {resp.status}")
            first = await _first_bytes(resp.content)
            if first.lstrip().startswith(b"<"):
                raise _failure(where, first + await resp.content.read(MAX_ERROR_BODY))
            raw = await bills.spool(resp.content.iter_chunked(bills.CHUNK), where=where, first=first)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise WxPayUnreachable(f"{where}: {type(exc).__name__} {exc}".strip()) from None
    log.info("%s: bill downloaded (%s)", where, "gzip" if gzip else "plain")
    return bills.bill_from_spool(date, raw, mch_id=client.merchant.mch_id, where=where)


async def _first_bytes(content: aiohttp.StreamReader) -> bytes:
    """Enough of the answer to tell XML from a bill (whitespace may come first)."""
    first = b""
    while not first.strip() and len(first) < MAX_ERROR_BODY:
        chunk = await content.readany()
        if not chunk:
            break
        first += chunk
    return first


def _failure(where: str, body: bytes) -> GatewayError:
    try:
        reply = xmlcodec.parse(body)
    except xmlcodec.MalformedXML as exc:
        return WxPayBadResponse(f"{where}: {exc}")
    message, code = reply.get("return_msg", ""), reply.get("error_code", "")
    if reply.get("return_code") == "SUCCESS":
        return WxPayBadResponse(f"{where}: XML instead of a bill: {message[:128]}")
    words = (message.strip().lower(), code.strip().lower())
    if any(w in NOT_READY_MESSAGES or w in NOT_READY_CODES for w in words):
        log.info("%s: not ready: %s %s", where, message, code)
        return BillNotReady(code or "NO_BILL", f"{where}: {message}", reply)
    if any(w in TRANSIENT for w in words):
        return GatewayUnavailable(code or "SYSTEMERROR", f"{where}: {message}", reply)
    # A bad signature, a closed bill permission, a bad parameter: asking again cannot help.
    return GatewayError(code or "RETURN_FAIL", f"{where}: {message}", reply)
