"""WeChat Pay API v3 face of the simulator: JSON, RSA signatures both ways,
AES-GCM notify resources, ``/v3/certificates``.

The merchant's requests are verified as WeChat does (``Authorization:
WECHATPAY2-SHA256-RSA2048 ...`` over ``METHOD\\nURL\\ntimestamp\\nnonce\\nbody\\n``,
the merchant certificate found by ``serial_no``); every answer, error answers
included, is signed over ``timestamp\\nnonce\\nbody\\n`` with the signer of the
current mode. Trades live in the same TradeBook as v2's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import re
import secrets
import time
from typing import Any, Protocol

import tornado.web

from server.simulator import v3_crypto, v3_messages
from server.simulator.bills import BillDesk, BillUnavailable
from server.simulator.refunds import RefundDesk
from server.simulator.trades import V3, TradeBook, TradeError
from server.simulator.v3_keys import SIGNATURE_TYPE, V3Keys
from server.simulator.v3_messages import BEIJING, beijing_compact, signed_headers, transaction

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
CLOCK_SKEW = 300  # seconds a request's timestamp may be off, as WeChat allows
OUT_TRADE_NO = re.compile(r"^[A-Za-z0-9_\-|*]{6,32}$")
OUT_REFUND_NO = re.compile(r"^[A-Za-z0-9_\-|*@]{1,64}$")
AUTH_FIELD = re.compile(r'(\w+)="([^"]*)"')

# v2 error codes of the shared TradeBook -> v3's (HTTP status, code).
V3_ERRORS = {
    "ORDERNOTEXIST": (404, "ORDER_NOT_EXIST"),
    "ORDERPAID": (403, "ORDERPAID"),
    "ORDERCLOSED": (400, "ORDER_CLOSED"),
    "INVALID_REQUEST": (403, "OUT_TRADE_NO_USED"),
    "CLOSE_TOO_EARLY": (400, "CLOSE_TOO_EARLY"),  # the simulator's: WeChat documents no code for it
    # refunds
    "NOTENOUGH": (403, "NOT_ENOUGH"),
    "INVALID_TRANSACTIONID": (404, "RESOURCE_NOT_EXISTS"),
    "TRADE_STATE_ERROR": (400, "INVALID_REQUEST"),
    "REFUNDNOTEXIST": (404, "RESOURCE_NOT_EXISTS"),
    "SYSTEMERROR": (500, "SYSTEM_ERROR"),
}


class Simulated(Protocol):
    """What the v3 face uses of the simulator (``app.Simulator``, which imports this module)."""

    trades: TradeBook
    api_delay: float
    v3: V3Keys | None
    refunds: RefundDesk
    bills: BillDesk


class V3Error(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def of(cls, exc: TradeError) -> V3Error:
        status, code = V3_ERRORS.get(exc.err_code, (400, exc.err_code))
        return cls(status, code, exc.err_code_des)


class V3Handler(tornado.web.RequestHandler):
    """Authenticates the merchant, dispatches, signs whatever it answers."""

    def initialize(self, sim: Simulated, prefix: str) -> None:
        self.sim = sim
        self.prefix = prefix
        assert sim.v3 is not None  # routes() mounts this face only with v3 keys
        self.keys: V3Keys = sim.v3

    def check_xsrf_cookie(self) -> None:
        """Server-to-server and cookie-less: nothing for XSRF to protect."""

    async def prepare(self) -> None:
        if self.sim.api_delay:
            await asyncio.sleep(self.sim.api_delay)

    async def _serve(self, action: Any, *args: str) -> None:
        try:
            self._authenticate()
            status, answer = action(*args)
        except V3Error as exc:
            log.info("simulator v3: %s %s refused: %s %s", self.request.method, self.request.path, exc.code,
                     exc.message)
            status, answer = exc.status, {"code": exc.code, "message": exc.message}
        except TradeError as exc:
            err = V3Error.of(exc)
            status, answer = err.status, {"code": err.code, "message": err.message}
        self._answer(status, answer)

    def _authenticate(self) -> None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, rest = header.partition(" ")
        fields = dict(AUTH_FIELD.findall(rest))
        if scheme != SIGNATURE_TYPE or not all(
                fields.get(f) for f in ("mchid", "nonce_str", "signature", "timestamp", "serial_no")):
            raise V3Error(401, "SIGN_ERROR", "Authorization不合法")
        if fields["mchid"] != self.keys.mchid:
            raise V3Error(401, "SIGN_ERROR", "商户号与证书不匹配")
        public_key = self.keys.merchant_key(fields["serial_no"])
        if public_key is None:
            raise V3Error(401, "SIGN_ERROR", "商户证书序列号有误")
        if not fields["timestamp"].isdigit() or abs(time.time() - int(fields["timestamp"])) > CLOCK_SKEW:
            raise V3Error(401, "SIGN_ERROR", "请求时间戳与系统时间相差过大")
        body = self.request.body.decode("utf-8", errors="replace")
        uri = self.request.uri or ""
        # The merchant signs the URL as it would against api.mch.weixin.qq.com;
        # behind the sandbox prefix either reading of "the URL" is honest.
        urls = {uri, uri.removeprefix(self.prefix)}
        if not any(v3_crypto.verify(public_key, f"{self.request.method}\n{url}\n{fields['timestamp']}\n"
                                              f"{fields['nonce_str']}\n{body}\n", fields["signature"])
                   for url in urls):
            raise V3Error(401, "SIGN_ERROR", "签名错误")

    def _json_body(self) -> dict[str, Any]:
        if len(self.request.body) > MAX_BODY:
            raise V3Error(400, "PARAM_ERROR", "请求体过大")
        try:
            payload = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError):
            raise V3Error(400, "PARAM_ERROR", "请求体不是合法的JSON") from None
        if not isinstance(payload, dict):
            raise V3Error(400, "PARAM_ERROR", "请求体不是JSON对象")
        return payload

    def _check_mchid(self, mchid: Any) -> None:
        if not mchid:
            raise V3Error(400, "PARAM_ERROR", "缺少参数mchid")
        if mchid != self.keys.mchid:
            raise V3Error(400, "MCH_NOT_EXISTS", "商户号不存在")

    def _answer(self, status: int, answer: dict[str, Any] | None) -> None:
        body = b"" if answer is None else json.dumps(answer, ensure_ascii=False).encode()
        self.set_status(status)
        self.clear_header("Content-Type")
        if answer is not None:
            self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Request-ID", secrets.token_hex(16))
        for name, value in signed_headers(self.keys, body).items():
            self.set_header(name, value)
        self.finish(body or None)


class NativeHandler(V3Handler):
    """``POST /v3/pay/transactions/native``."""

    async def post(self) -> None:
        await self._serve(self._native)

    def _native(self) -> tuple[int, dict[str, Any]]:
        order = self._json_body()
        missing = [f for f in ("appid", "mchid", "description", "out_trade_no", "notify_url", "amount")
                   if not order.get(f)]
        if missing:
            raise V3Error(400, "PARAM_ERROR", "缺少参数" + ",".join(missing))
        self._check_mchid(order["mchid"])
        if order["appid"] != self.keys.appid:
            raise V3Error(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        amount = order["amount"]
        total = amount.get("total") if isinstance(amount, dict) else None
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            raise V3Error(400, "PARAM_ERROR", "amount.total必须是正整数(分)")
        if amount.get("currency", "CNY") != "CNY":
            raise V3Error(400, "PARAM_ERROR", "amount.currency只支持CNY")
        if not isinstance(order["out_trade_no"], str) or not OUT_TRADE_NO.match(order["out_trade_no"]):
            raise V3Error(400, "PARAM_ERROR", "out_trade_no格式错误")
        if not isinstance(order["description"], str) or len(order["description"]) > 127:
            raise V3Error(400, "PARAM_ERROR", "description格式错误")
        if not str(order["notify_url"]).startswith(("http://", "https://")):
            raise V3Error(400, "PARAM_ERROR", "notify_url格式错误")
        request = {"appid": order["appid"], "mch_id": order["mchid"], "body": order["description"],
                   "out_trade_no": order["out_trade_no"], "total_fee": str(total), "trade_type": "NATIVE",
                   "notify_url": str(order["notify_url"]), "attach": str(order.get("attach", ""))}
        scene = order.get("scene_info")
        if isinstance(scene, dict) and scene.get("payer_client_ip"):
            request["spbill_create_ip"] = str(scene["payer_client_ip"])
        if order.get("time_expire"):
            try:
                request["time_expire"] = beijing_compact(str(order["time_expire"]))
            except ValueError:
                raise V3Error(400, "PARAM_ERROR", "time_expire格式错误(RFC 3339)") from None
        trade = self.sim.trades.unified_order(request, api=V3)
        return 200, {"code_url": trade.code_url}


class QueryHandler(V3Handler):
    """``GET /v3/pay/transactions/out-trade-no/{no}?mchid=``."""

    async def get(self, out_trade_no: str) -> None:
        await self._serve(self._query, out_trade_no)

    def _query(self, out_trade_no: str) -> tuple[int, dict[str, Any]]:
        self._check_mchid(self.get_query_argument("mchid", ""))
        return 200, transaction(self.keys, self.sim.trades.get(out_trade_no))


class CloseHandler(V3Handler):
    """``POST /v3/pay/transactions/out-trade-no/{no}/close`` ``{"mchid"}`` -> 204."""

    async def post(self, out_trade_no: str) -> None:
        await self._serve(self._close, out_trade_no)

    def _close(self, out_trade_no: str) -> tuple[int, None]:
        self._check_mchid(self._json_body().get("mchid"))
        self.sim.trades.close(out_trade_no)
        return 204, None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class RefundsHandler(V3Handler):
    """``POST /v3/refund/domestic/refunds``: a refund of a paid trade (or of one of its transactions)."""

    async def post(self) -> None:
        await self._serve(self._refund)

    def _refund(self) -> tuple[int, dict[str, Any]]:
        payload = self._json_body()
        out_refund_no, amount = payload.get("out_refund_no"), payload.get("amount")
        missing = [f for f, v in (("out_refund_no", out_refund_no), ("amount", amount)) if not v]
        if not (payload.get("transaction_id") or payload.get("out_trade_no")):
            missing.append("transaction_id|out_trade_no")
        if missing:
            raise V3Error(400, "PARAM_ERROR", "缺少参数" + ",".join(missing))
        if not isinstance(out_refund_no, str) or not OUT_REFUND_NO.match(out_refund_no):
            raise V3Error(400, "PARAM_ERROR", "out_refund_no格式错误")
        if not isinstance(amount, dict) or not _positive_int(amount.get("refund")) \
                or not _positive_int(amount.get("total")):
            raise V3Error(400, "PARAM_ERROR", "amount.refund和amount.total必须是正整数(分)")
        if amount.get("currency", "CNY") != "CNY":
            raise V3Error(400, "PARAM_ERROR", "amount.currency只支持CNY")
        notify_url = str(payload.get("notify_url") or "")
        if notify_url and not notify_url.startswith(("http://", "https://")):
            raise V3Error(400, "PARAM_ERROR", "notify_url格式错误")
        refund = self.sim.refunds.apply(
            api=V3, out_refund_no=out_refund_no, total_fee=amount["total"], refund_fee=amount["refund"],
            out_trade_no=str(payload.get("out_trade_no") or ""),
            transaction_id=str(payload.get("transaction_id") or ""), notify_url=notify_url,
            reason=str(payload.get("reason") or ""))
        return 200, v3_messages.refund(refund)


class RefundQueryHandler(V3Handler):
    """``GET /v3/refund/domestic/refunds/{out_refund_no}``."""

    async def get(self, out_refund_no: str) -> None:
        await self._serve(self._query, out_refund_no)

    def _query(self, out_refund_no: str) -> tuple[int, dict[str, Any]]:
        return 200, v3_messages.refund(self.sim.trades.get_refund(out_refund_no))


class CertificatesHandler(V3Handler):
    """``GET /v3/certificates``: the platform certificates, encrypted with the APIv3 key."""

    async def get(self) -> None:
        await self._serve(self._certificates)

    def _certificates(self) -> tuple[int, dict[str, Any]]:
        data = []
        for signer in self.keys.certificates:
            cert = signer.certificate
            assert cert is not None  # certificates are certificate signers
            data.append({
                "serial_no": signer.serial,
                "effective_time": cert.not_valid_before_utc.astimezone(BEIJING).isoformat(),
                "expire_time": cert.not_valid_after_utc.astimezone(BEIJING).isoformat(),
                "encrypt_certificate": v3_crypto.encrypt(self.keys.apiv3_key, v3_crypto.certificate_pem(cert),
                                                       "certificate"),
            })
        return 200, {"data": data}


BILL_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class TradeBillHandler(V3Handler):
    """``GET /v3/bill/tradebill?bill_date=YYYY-MM-DD&bill_type=ALL[&tar_type=GZIP]``:
    the file's SHA1 (over the bytes as served) and a download_url valid 30 s."""

    async def get(self) -> None:
        await self._serve(self._trade_bill)

    def _trade_bill(self) -> tuple[int, dict[str, Any]]:
        text = self.get_query_argument("bill_date", "")
        try:
            day = dt.date.fromisoformat(text) if BILL_DATE.match(text) else None
        except ValueError:
            day = None
        if day is None:
            raise V3Error(400, "PARAM_ERROR", "bill_date格式错误(yyyy-MM-DD)")
        if self.get_query_argument("bill_type", "ALL") != "ALL":
            raise V3Error(400, "PARAM_ERROR", "the simulator makes ALL bills only")
        tar_type = self.get_query_argument("tar_type", "")
        if tar_type not in ("", "GZIP"):
            raise V3Error(400, "PARAM_ERROR", "tar_type只支持GZIP")
        try:
            data = self.sim.bills.bill(day, gzipped=tar_type == "GZIP")
        except BillUnavailable as exc:
            if exc.creating:
                raise V3Error(400, "STATEMENT_CREATING", "账单生成中") from None
            raise V3Error(400, "NO_STATEMENT_EXIST", "请求的账单文件不存在") from None
        token = self.sim.bills.offer(data)
        url = f"{self.request.protocol}://{self.request.host}{self.prefix}/v3/billdownload/file?token={token}"
        if tar_type:
            url += "&tartype=gzip"  # as WeChat's own URLs say it
        return 200, {"hash_type": "SHA1", "hash_value": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                     "download_url": url}


class BillFileHandler(V3Handler):
    """``GET /v3/billdownload/file?token=``: the merchant's request is checked as
    any other, the file comes back unsigned (WeChat signs no download)."""

    async def get(self) -> None:
        try:
            self._authenticate()
            data = self.sim.bills.fetch(self.get_query_argument("token", ""))
            if data is None:
                raise V3Error(400, "INVALID_REQUEST", "下载链接已失效")
        except V3Error as exc:
            self._answer(exc.status, {"code": exc.code, "message": exc.message})
            return
        self.set_header("Content-Type", "application/octet-stream")
        self.finish(data)


def routes(prefix: str, sim: Simulated) -> list[tornado.web.URLSpec]:
    p = prefix.rstrip("/")
    args = {"sim": sim, "prefix": p}
    no = r"([A-Za-z0-9_\-|*]{1,32})"
    return [
        tornado.web.url(p + "/v3/pay/transactions/native", NativeHandler, args),
        tornado.web.url(p + "/v3/pay/transactions/out-trade-no/" + no, QueryHandler, args),
        tornado.web.url(p + "/v3/pay/transactions/out-trade-no/" + no + "/close", CloseHandler, args),
        tornado.web.url(p + "/v3/certificates", CertificatesHandler, args),
        tornado.web.url(p + "/v3/refund/domestic/refunds", RefundsHandler, args),
        tornado.web.url(p + r"/v3/refund/domestic/refunds/([A-Za-z0-9_\-|*@]{1,64})", RefundQueryHandler, args),
        tornado.web.url(p + "/v3/bill/tradebill", TradeBillHandler, args),
        tornado.web.url(p + "/v3/billdownload/file", BillFileHandler, args),
    ]
