"""WeChat Pay API v3 client for Native checkout: place, query and close a
trade, and download the platform certificates.

One aiohttp session for the process. Every request carries the
``WECHATPAY2-SHA256-RSA2048`` Authorization over the exact bytes sent; every
2xx answer's signature is checked by the Verifier before a field of it is
read. An error answer (4xx) that is signed must verify too; an unsigned one is
read as WeChat's official SDKs read it (they check the status first), since
WeChat does not sign every error. What cannot be trusted is GatewayUnavailable:
asking again later is always safe.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from yarl import URL

from server.gateway.abc import BEIJING
from server.gateway.errors import (
    BillNotReady,
    CloseTooEarly,
    GatewayError,
    GatewayUnavailable,
    RefundNotFound,
    RefundRefused,
    TradeAlreadyPaid,
    TradeClosed,
    TradeNotFound,
)
from server.gateway.wxpay_v3 import crypto
from server.gateway.wxpay_v3.verifier import SignatureRejected, Verifier, header

log = logging.getLogger(__name__)

MAX_ANSWER = 1 << 20
# A day's bill can be large: no cap on the whole download, only on silence.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)

_KINDS: dict[str, type[GatewayError]] = {
    "ORDER_NOT_EXIST": TradeNotFound,
    "RESOURCE_NOT_EXISTS": TradeNotFound,
    "ORDERNOTEXIST": TradeNotFound,
    "ORDERPAID": TradeAlreadyPaid,
    "ORDER_PAID": TradeAlreadyPaid,
    "ORDER_CLOSED": TradeClosed,
    "ORDERCLOSED": TradeClosed,
    "CLOSE_TOO_EARLY": CloseTooEarly,  # the simulator's; WeChat documents no code for it
    "SYSTEM_ERROR": GatewayUnavailable,
    "SYSTEMERROR": GatewayUnavailable,
    "FREQUENCY_LIMITED": GatewayUnavailable,
    "FREQUENCY_LIMIT_EXCEED": GatewayUnavailable,
    "RATELIMIT_EXCEEDED": GatewayUnavailable,
}


# The refund calls' own codes (an unknown 4xx stays a plain GatewayError:
# neither refused nor worth retrying, for a person to look at).
# RESOURCE_NOT_EXISTS on a refund: no such trade to refund from.
REFUND_KINDS: dict[str, type[GatewayError]] = {
    **_KINDS,
    "NOT_ENOUGH": RefundRefused,  # WeChat: the merchant's refundable balance is short
    "PARAM_ERROR": RefundRefused,
    "INVALID_REQUEST": RefundRefused,
    "RESOURCE_NOT_EXISTS": RefundRefused,
    "ORDER_NOT_EXIST": RefundRefused,
    "USER_ACCOUNT_ABNORMAL": RefundRefused,
}
# A refund query's RESOURCE_NOT_EXISTS: no refund with this out_refund_no.
REFUND_QUERY_KINDS: dict[str, type[GatewayError]] = {**_KINDS, "RESOURCE_NOT_EXISTS": RefundNotFound}
# The bill calls: no bill for the day (no trade, or not yet) and a bill still
# being made (WeChat makes yesterday's from 9:00) are both "not ready".
BILL_KINDS: dict[str, type[GatewayError]] = {**_KINDS, "NO_STATEMENT_EXIST": BillNotReady,
                                             "STATEMENT_CREATING": BillNotReady}


def rfc3339(when: dt.datetime) -> str:
    """WeChat's ``yyyy-MM-DDTHH:mm:ss+08:00``."""
    return when.astimezone(BEIJING).isoformat(timespec="seconds")


def parse_rfc3339(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def v3_error(status: int, code: str, message: str, kinds: Mapping[str, type[GatewayError]] = _KINDS) -> GatewayError:
    """The typed error for a v3 error answer (``kinds``: the call's own codes)."""
    kind = kinds.get(code)
    if kind is None:
        kind = GatewayUnavailable if status >= 500 or status == 429 else GatewayError
    return kind(code, message)


class WxPayV3Client:
    def __init__(self, session: aiohttp.ClientSession, api_base: str, mchid: str, appid: str, serial: str,
                 private_key: rsa.RSAPrivateKey, apiv3_key: str | bytes, verifier: Verifier,
                 timeout: float = 10.0, tls: ssl.SSLContext | None = None):
        self._session = session
        self._api_base = api_base.rstrip("/")
        self.mchid = mchid
        self.appid = appid
        self.serial = serial
        self._private_key = private_key
        self.apiv3_key = crypto.apiv3_key(apiv3_key)
        self.verifier = verifier
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tls: ssl.SSLContext | bool = tls if tls is not None else True  # True: aiohttp's default checks
        verifier.fetch_with(self.download_certificates)

    # -- the calls ------------------------------------------------------------

    async def create_native(self, *, out_trade_no: str, description: str, total: int, notify_url: str,
                            time_expire: dt.datetime, client_ip: str = "127.0.0.1") -> dict[str, Any]:
        """Place (or fetch again) a Native trade; the answer carries ``code_url``."""
        reply = await self._call("POST", "/v3/pay/transactions/native", {
            "appid": self.appid,
            "mchid": self.mchid,
            "description": description[:127],
            "out_trade_no": out_trade_no,
            "time_expire": rfc3339(time_expire),
            "notify_url": notify_url,
            "amount": {"total": total, "currency": "CNY"},
            "scene_info": {"payer_client_ip": client_ip},
        })
        if not isinstance(reply.get("code_url"), str) or not reply["code_url"]:
            raise GatewayUnavailable("BAD_RESPONSE", "native order answered without code_url")
        return reply

    async def query(self, out_trade_no: str) -> dict[str, Any]:
        """The trade as WeChat sees it (``trade_state``, ``transaction_id``, ``amount.total``, ``success_time``)."""
        reply = await self._call(
            "GET", f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}?mchid={quote(self.mchid)}")
        if reply.get("mchid", self.mchid) != self.mchid or reply.get("appid", self.appid) != self.appid:
            raise GatewayUnavailable("BAD_RESPONSE", f"query for {out_trade_no}: answer is for another merchant")
        if reply.get("out_trade_no", out_trade_no) != out_trade_no:
            raise GatewayUnavailable("BAD_RESPONSE", f"query for {out_trade_no}: answer is for another trade")
        return reply

    async def close(self, out_trade_no: str) -> None:
        await self._call("POST", f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}/close",
                         {"mchid": self.mchid})

    async def refund(self, *, out_refund_no: str, total: int, refund: int, reason: str, notify_url: str,
                     out_trade_no: str = "", transaction_id: str = "") -> dict[str, Any]:
        """Ask for a refund (the same out_refund_no again answers for the same refund);
        by transaction_id when given, else by out_trade_no."""
        by = {"transaction_id": transaction_id} if transaction_id else {"out_trade_no": out_trade_no}
        request: dict[str, Any] = {**by, "out_refund_no": out_refund_no,
                                   "amount": {"refund": refund, "total": total, "currency": "CNY"}}
        if reason:
            request["reason"] = reason[:80]
        if notify_url:
            request["notify_url"] = notify_url
        return await self._call("POST", "/v3/refund/domestic/refunds", request, kinds=REFUND_KINDS)

    async def query_refund(self, out_refund_no: str) -> dict[str, Any]:
        """The refund as WeChat sees it now (``status``, ``amount.refund``, ``success_time``)."""
        return await self._call("GET", f"/v3/refund/domestic/refunds/{quote(out_refund_no, safe='')}",
                                kinds=REFUND_QUERY_KINDS)

    async def trade_bill(self, bill_date: dt.date, *, gzip: bool) -> dict[str, Any]:
        """``GET /v3/bill/tradebill`` (ALL): ``{"hash_type", "hash_value", "download_url"}``."""
        query = f"bill_date={bill_date.isoformat()}&bill_type=ALL" + ("&tar_type=GZIP" if gzip else "")
        return await self._call("GET", f"/v3/bill/tradebill?{query}", kinds=BILL_KINDS)

    @contextlib.asynccontextmanager
    async def open_download(self, download_url: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET a ``download_url`` WeChat handed out, signed like any call; the
        answer is the file, which WeChat does not sign (its hash was in the
        signed answer that named the URL). Only on the API's own host: our
        signed request goes nowhere else. aiohttp's errors are the caller's."""
        target, base = URL(download_url, encoded=True), URL(self._api_base)
        if not target.is_absolute() or (target.scheme, target.host, target.port) != (base.scheme, base.host,
                                                                                      base.port):
            raise GatewayUnavailable("BAD_RESPONSE", f"download_url {download_url[:80]!r} is not on {base.host}")
        signed_path = target.raw_path_qs
        async with self._session.get(target, headers=self._headers("GET", signed_path, b""),
                                     timeout=STREAM_TIMEOUT, ssl=self._tls) as resp:
            if not 200 <= resp.status < 300:
                raise await self._error("GET download_url", resp.status, await resp.content.read(MAX_ANSWER),
                                        resp.headers, _KINDS)
            yield resp

    async def download_certificates(self) -> list[x509.Certificate]:
        """The platform certificates ``/v3/certificates`` lists, decrypted with
        the APIv3 key (which only WeChat and we hold), the answer verified under
        them or under one we already trust."""
        raw, headers = await self._exchange("GET", "/v3/certificates", None)
        reply = self._json(raw, "/v3/certificates")
        certs: dict[str, x509.Certificate] = {}
        for entry in reply.get("data") or []:
            try:
                enc = entry["encrypt_certificate"]
                pem = crypto.decrypt_resource(self.apiv3_key, enc["nonce"], enc.get("associated_data", ""),
                                              enc["ciphertext"])
                cert = crypto.load_certificate(pem, "platform certificate")
            except (KeyError, TypeError, crypto.DecryptError, crypto.CredentialError) as exc:
                log.warning("/v3/certificates: entry %s skipped: %s", str(entry.get("serial_no", "?"))[:64], exc)
                continue
            serial = crypto.certificate_serial(cert)
            if crypto.serial_key(str(entry.get("serial_no", ""))) != crypto.serial_key(serial):
                log.warning("/v3/certificates: listed serial %s is certificate %s, skipped",
                            str(entry.get("serial_no"))[:64], serial)
                continue
            certs[serial] = cert
        extra = {s: crypto.certificate_public_key(c, f"platform certificate {s}") for s, c in certs.items()}
        try:
            self.verifier.check(headers, raw, extra=extra)
        except SignatureRejected as exc:
            raise GatewayUnavailable("BAD_RESPONSE", f"/v3/certificates: {exc}") from None
        return list(certs.values())

    # -- one exchange -----------------------------------------------------------

    async def _call(self, method: str, path: str, payload: Mapping[str, Any] | None = None, *,
                    kinds: Mapping[str, type[GatewayError]] = _KINDS) -> dict[str, Any]:
        raw, headers = await self._exchange(method, path, payload, kinds)
        try:
            await self.verifier.check_async(headers, raw)
        except SignatureRejected as exc:
            raise GatewayUnavailable("BAD_RESPONSE", f"{method} {path.split('?')[0]}: {exc}") from None
        return self._json(raw, path) if raw else {}

    async def _exchange(self, method: str, path: str, payload: Mapping[str, Any] | None,
                        kinds: Mapping[str, type[GatewayError]] = _KINDS) -> tuple[bytes, Mapping[str, str]]:
        """Send one signed request; the 2xx answer's raw body and headers, or the typed error."""
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = self._headers(method, path, body)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        serial = self.verifier.request_serial()
        if serial:
            headers["Wechatpay-Serial"] = serial
        where = f"{method} {path.split('?')[0]}"
        try:
            # encoded=True: the path and query go out exactly as signed.
            async with self._session.request(method, URL(self._api_base + path, encoded=True), data=body or None,
                                             headers=headers, timeout=self._timeout, ssl=self._tls) as resp:
                raw = await resp.content.read(MAX_ANSWER)
                status, answer_headers = resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise GatewayUnavailable("UNREACHABLE", f"{where}: {type(exc).__name__} {exc}".strip()) from None
        if 200 <= status < 300:
            return raw, answer_headers
        raise await self._error(where, status, raw, answer_headers, kinds)

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return {
            "Authorization": crypto.authorization(self.mchid, self.serial, self._private_key, method, path, body),
            "Accept": "application/json",
            "User-Agent": "paypush",
        }

    async def _error(self, where: str, status: int, raw: bytes, headers: Mapping[str, str],
                     kinds: Mapping[str, type[GatewayError]]) -> GatewayError:
        try:
            answer = json.loads(raw)
            code, message = str(answer.get("code") or f"HTTP_{status}"), str(answer.get("message") or "")
        except (ValueError, AttributeError):
            code, message = f"HTTP_{status}", raw[:200].decode("utf-8", "replace")
        if header(headers, "Wechatpay-Signature"):
            try:
                await self.verifier.check_async(headers, raw)
            except SignatureRejected as exc:
                return GatewayUnavailable("BAD_RESPONSE", f"{where}: HTTP {status} {code}, but {exc}")
        elif status < 500:
            log.info("%s: unsigned HTTP %s %s", where, status, code)
        return v3_error(status, code, f"{where}: {message}" if message else where, kinds)

    @staticmethod
    def _json(raw: bytes, path: str) -> dict[str, Any]:
        try:
            answer = json.loads(raw)
        except ValueError:
            raise GatewayUnavailable("BAD_RESPONSE", f"{path.split('?')[0]}: answer is not JSON") from None
        if not isinstance(answer, dict):
            raise GatewayUnavailable("BAD_RESPONSE", f"{path.split('?')[0]}: answer is not a JSON object")
        return answer
