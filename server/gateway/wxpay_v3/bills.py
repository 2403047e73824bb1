"""WeChat Pay v3 trade bill: ``GET /v3/bill/tradebill`` (signed, its answer
verified like any other) names ``download_url`` and the file's SHA1; then the
file itself, which WeChat does not sign (pay.weixin.qq.com/doc/v3/merchant/4013071254:
"下载账单微信不返回签名头信息 ... 验证账单文件的哈希值"). The hash is taken over the
bytes as downloaded (the gzip, when asked for one) while they are spooled, and
checked before a single line is handed out: a file that does not match is not
believed at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from typing import Any

import aiohttp

from server.gateway import bills
from server.gateway.abc import Bill
from server.gateway.errors import GatewayError, GatewayUnavailable
from server.gateway.wxpay_v3.client import WxPayV3Client

log = logging.getLogger(__name__)

SHA1_HEX = re.compile(r"[0-9a-fA-F]{40}")


async def download(client: WxPayV3Client, date: dt.date, *, gzip: bool = True) -> Bill:
    """The ALL bill of a Beijing-time day, downloaded and hash-checked before this
    returns; its lines are parsed as they are iterated."""
    where = f"tradebill {date.isoformat()}"
    hash_value, url = _file_of(await client.trade_bill(date, gzip=gzip), where)
    digest = hashlib.sha1(usedforsecurity=True)
    try:
        async with client.open_download(url) as resp:
            raw = await bills.spool(resp.content.iter_chunked(bills.CHUNK), where=where, observe=digest.update)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise GatewayUnavailable("UNREACHABLE", f"{where} download: {type(exc).__name__} {exc}".strip()) from None
    if digest.hexdigest() != hash_value.lower():
        raw.close()
        log.warning("%s: file SHA1 %s is not the %s tradebill named: not believed", where, digest.hexdigest(),
                    hash_value)
        raise GatewayError("BILL_HASH_MISMATCH", f"{where}: the file's SHA1 is not the one WeChat named")
    log.info("%s: bill downloaded (%s), SHA1 checked", where, "gzip" if gzip else "plain")
    return bills.bill_from_spool(date, raw, mch_id=client.mchid, where=where)


def _file_of(answer: dict[str, Any], where: str) -> tuple[str, str]:
    hash_type, hash_value, url = answer.get("hash_type"), answer.get("hash_value"), answer.get("download_url")
    if str(hash_type).upper() != "SHA1":
        raise GatewayUnavailable("BAD_RESPONSE", f"{where}: hash_type {str(hash_type)[:16]!r} is not SHA1")
    if not isinstance(hash_value, str) or not SHA1_HEX.fullmatch(hash_value):
        raise GatewayUnavailable("BAD_RESPONSE", f"{where}: hash_value is not a SHA1")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise GatewayUnavailable("BAD_RESPONSE", f"{where}: no download_url")
    return hash_value, url
