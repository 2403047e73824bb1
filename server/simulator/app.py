"""HTTP face of the simulator: WeChat's merchant API plus a "phone" that pays.

Mounted under ``/sandbox/wxpay/`` in sandbox mode, or served on its own by
``paypush simulator``. None of it uses cookies, so none of it is XSRF-checked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import tornado.web

from server.gateway.wxpay_v2 import signing, xmlcodec
from server.simulator import refund_messages, v3
from server.simulator.bills import BillDesk, BillUnavailable
from server.simulator.notifier import Notifier, NotifyPlan
from server.simulator.refunds import RefundDesk, RefundKnobs
from server.simulator.trades import TRADE_STATE_DESC, V2, Trade, TradeBook, TradeError
from server.simulator.v3_keys import V3Keys

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
UNIFIEDORDER_REQUIRED = ("body", "out_trade_no", "total_fee", "spbill_create_ip",
                         "notify_url", "trade_type")
REFUND_REQUIRED = ("out_refund_no", "total_fee", "refund_fee")
# WeChat: out_refund_no "只能是数字、大小写字母_-|*@", at most 64.
OUT_REFUND_NO = re.compile(r"^[A-Za-z0-9_\-|*@]{1,64}$")


@dataclass
class Simulator:
    appid: str
    mch_id: str
    key: str
    trades: TradeBook
    notifier: Notifier
    api_delay: float = 0.0  # test knob: WeChat answering slowly
    v3: V3Keys | None = None  # the v3 face is mounted only with v3 keys
    refunds: RefundDesk = field(init=False)  # both faces' refunds, on the shared book
    bills: BillDesk = field(init=False)  # both faces' daily bills, from the shared book

    def __post_init__(self) -> None:
        self.refunds = RefundDesk(self.trades, self.notifier)
        self.bills = BillDesk(self.trades, self.appid, self.mch_id)

    @classmethod
    def create(cls, session: aiohttp.ClientSession, *, appid: str, mch_id: str, key: str,
               close_min_age_seconds: float = 300.0, notify_speed: float = 1.0,
               v3: V3Keys | None = None) -> Simulator:
        """``v3``: the v3 face's keys (e.g. ``generate_sandbox_keys(dir).v3_keys(mch_id, appid)``);
        v2 and v3 share the trades, the phone and the notify knobs."""
        return cls(appid, mch_id, key, TradeBook(close_min_age_seconds),
                   Notifier(session, key, appid, mch_id, notify_speed, v3=v3), v3=v3)

    async def close(self) -> None:
        await self.refunds.close()
        await self.notifier.close()


class _SimHandler(tornado.web.RequestHandler):
    def initialize(self, sim: Simulator) -> None:
        self.sim = sim

    def check_xsrf_cookie(self) -> None:
        """Server-to-server and cookie-less: nothing for XSRF to protect."""


class MerchantApiHandler(_SimHandler):
    """``/pay/unifiedorder``, ``/pay/orderquery``, ``/pay/closeorder``,
    ``/secapi/pay/refund``, ``/pay/refundquery``, ``/pay/downloadbill``. The refund's mutual TLS is the
    listener's (``paypush simulator --client-ca``), not this handler's."""

    def initialize(self, sim: Simulator, action: str) -> None:  # type: ignore[override]
        self.sim = sim
        self.action = action

    def get(self) -> None:
        self._fail("REQUIRE_POST_METHOD: 请使用post方法")

    async def post(self) -> None:
        if self.sim.api_delay:
            await asyncio.sleep(self.sim.api_delay)
        body = self.request.body
        if not body:
            return self._fail("POST_DATA_EMPTY: post数据为空")
        if len(body) > MAX_BODY:
            return self._fail("XML_FORMAT_ERROR: 请求过大")
        try:
            request = xmlcodec.parse(body)
        except xmlcodec.MalformedXML:
            return self._fail("XML_FORMAT_ERROR: XML格式错误")
        if request.get("appid") != self.sim.appid:
            return self._fail("appid不存在")
        if request.get("mch_id") != self.sim.mch_id:
            return self._fail("mch_id参数格式错误")
        if not request.get("nonce_str"):
            return self._fail("缺少参数nonce_str")
        # WeChat reads a request without sign_type as MD5, whatever its sign looks like.
        if not signing.verify(request, self.sim.key, default_sign_type=signing.MD5):
            return self._fail("签名错误")
        self.sign_type = request.get("sign_type") or signing.MD5
        if self.action == "downloadbill":
            return self._downloadbill(request)
        try:
            result = getattr(self, "_" + self.action)(request)
        except TradeError as exc:
            return self._reply({"result_code": "FAIL", "err_code": exc.err_code,
                                "err_code_des": exc.err_code_des})
        self._reply({"result_code": "SUCCESS", **result})

    def _unifiedorder(self, request: dict[str, str]) -> dict[str, str]:
        missing = [f for f in UNIFIEDORDER_REQUIRED if not request.get(f)]
        if request.get("trade_type") == "NATIVE" and not request.get("product_id"):
            missing.append("product_id")
        if missing:
            raise TradeError("LACK_PARAMS", "缺少参数" + ",".join(missing))
        if request["trade_type"] != "NATIVE":
            raise TradeError("PARAM_ERROR", "simulator supports trade_type NATIVE only")
        total_fee = request["total_fee"]
        if not total_fee.isdigit() or int(total_fee) <= 0:
            raise TradeError("PARAM_ERROR", "total_fee must be a positive integer (fen)")
        if len(request["out_trade_no"]) > 32:
            raise TradeError("PARAM_ERROR", "out_trade_no longer than 32")
        trade = self.sim.trades.unified_order(request)
        return {"trade_type": "NATIVE", "prepay_id": trade.prepay_id, "code_url": trade.code_url}

    def _orderquery(self, request: dict[str, str]) -> dict[str, str]:
        if not request.get("out_trade_no"):
            raise TradeError("LACK_PARAMS", "缺少参数out_trade_no")
        trade = self.sim.trades.get(request["out_trade_no"])
        answer = {"out_trade_no": trade.out_trade_no, "trade_state": trade.state,
                  "trade_state_desc": TRADE_STATE_DESC[trade.state],
                  "total_fee": str(trade.total_fee)}
        if trade.paid:
            answer.update(transaction_id=trade.transaction_id, time_end=trade.time_end,
                          openid=trade.openid, trade_type="NATIVE", bank_type="CMC",
                          cash_fee=str(trade.total_fee), fee_type="CNY")
        return answer

    def _closeorder(self, request: dict[str, str]) -> dict[str, str]:
        if not request.get("out_trade_no"):
            raise TradeError("LACK_PARAMS", "缺少参数out_trade_no")
        self.sim.trades.close(request["out_trade_no"])
        return {}

    def _refund(self, request: dict[str, str]) -> dict[str, str]:
        missing = [f for f in REFUND_REQUIRED if not request.get(f)]
        if not (request.get("transaction_id") or request.get("out_trade_no")):
            missing.append("transaction_id|out_trade_no")
        if missing:
            raise TradeError("PARAM_ERROR", "缺少参数" + ",".join(missing))
        if not OUT_REFUND_NO.match(request["out_refund_no"]):
            raise TradeError("PARAM_ERROR", "out_refund_no格式错误")
        if not (request["total_fee"].isdigit() and request["refund_fee"].isdigit()):
            raise TradeError("PARAM_ERROR", "total_fee和refund_fee必须是整数(分)")
        refund = self.sim.refunds.apply(
            api=V2, out_refund_no=request["out_refund_no"], total_fee=int(request["total_fee"]),
            refund_fee=int(request["refund_fee"]), out_trade_no=request.get("out_trade_no", ""),
            transaction_id=request.get("transaction_id", ""), notify_url=request.get("notify_url", ""),
            reason=request.get("refund_desc", ""))
        return refund_messages.refund_answer(refund)

    def _refundquery(self, request: dict[str, str]) -> dict[str, str]:
        # WeChat's precedence when several are given: refund_id > out_refund_no > transaction_id > out_trade_no.
        book = self.sim.trades
        if request.get("refund_id"):
            refunds = [book.by_refund_id(request["refund_id"])]
        elif request.get("out_refund_no"):
            refunds = [book.get_refund(request["out_refund_no"])]
        elif request.get("transaction_id") or request.get("out_trade_no"):
            refunds = book.refunds_of(out_trade_no=request.get("out_trade_no", ""),
                                      transaction_id=request.get("transaction_id", ""))
        else:
            raise TradeError("PARAM_ERROR", "refund_id、out_refund_no、transaction_id、out_trade_no必须填一个")
        return refund_messages.query_answer(book.get(refunds[0].out_trade_no), refunds)

    def _downloadbill(self, request: dict[str, str]) -> None:
        """Not XML when it succeeds: the bill itself, plain or gzip, unsigned."""
        try:
            day = dt.datetime.strptime(request.get("bill_date", ""), "%Y%m%d").date()
        except ValueError:
            return self._fail("invalid bill_date")
        if request.get("bill_type", "ALL") != "ALL":
            return self._fail("invalid bill_type: the simulator makes ALL bills only")
        tar_type = request.get("tar_type", "")
        if tar_type not in ("", "GZIP"):
            return self._fail("invalid tar_type")
        try:
            data = self.sim.bills.bill(day, gzipped=tar_type == "GZIP")
        except BillUnavailable as exc:
            self.set_header("Content-Type", "text/xml; charset=utf-8")
            failure = {"return_code": "FAIL", "return_msg": "Bill Creating"} if exc.creating else \
                {"return_code": "FAIL", "return_msg": "No Bill Exist", "error_code": "20002"}
            self.write(xmlcodec.render(failure))
            return
        self.set_header("Content-Type", "application/octet-stream" if tar_type else "text/plain; charset=utf-8")
        self.write(data)

    def _reply(self, fields: dict[str, str]) -> None:
        message = {"return_code": "SUCCESS", "return_msg": "OK", "appid": self.sim.appid,
                   "mch_id": self.sim.mch_id, "nonce_str": signing.nonce(), **fields}
        self.set_header("Content-Type", "text/xml; charset=utf-8")
        self.write(xmlcodec.render(signing.signed(message, self.sim.key, self.sign_type)))

    def _fail(self, message: str) -> None:
        # Like WeChat: a refused request gets return_code FAIL, unsigned.
        self.set_header("Content-Type", "text/xml; charset=utf-8")
        self.write(xmlcodec.render({"return_code": "FAIL", "return_msg": message}))


def _trade_json(trade: Trade) -> dict[str, Any]:
    return {"out_trade_no": trade.out_trade_no, "trade_state": trade.state,
            "total_fee": trade.total_fee, "transaction_id": trade.transaction_id,
            "code_url": trade.code_url, "body": trade.request.get("body", ""),
            "spbill_create_ip": trade.request.get("spbill_create_ip", ""), "api": trade.api,
            "notify_replies": [], "refunds": [refund_messages.refund_json(r) for r in trade.refunds],
            "extra_transactions": [{"transaction_id": p.transaction_id, "time_end": p.time_end,
                                    "total_fee": trade.total_fee} for p in trade.extra_payments]}


class PhoneJsonHandler(_SimHandler):
    """Test-facing phone: ``POST scan`` (USERPAYING) or ``POST pay`` with knobs.

    Body: ``{"code_url": "...", "notify": {"drop": false, "copies": 1, "delay": 0,
    "coupons": 0, "omit_sign_type": false}}``; ``"duplicate": true`` pays an already
    paid trade again (a second transaction, its own notify).
    """

    def initialize(self, sim: Simulator, action: str) -> None:  # type: ignore[override]
        self.sim = sim
        self.action = action

    def post(self) -> None:
        try:
            payload = json.loads(self.request.body or b"{}")
            code_url = str(payload["code_url"])
            duplicate = bool(payload.get("duplicate", False))
            knobs = payload.get("notify") or {}
            plan = NotifyPlan(drop=bool(knobs.get("drop", False)),
                              copies=max(1, min(int(knobs.get("copies", 1)), 50)),
                              delay=max(0.0, float(knobs.get("delay", 0))),
                              coupons=max(0, min(int(knobs.get("coupons", 0)), 20)),
                              omit_sign_type=bool(knobs.get("omit_sign_type", False)))
        except (ValueError, KeyError, TypeError, AttributeError):
            self.set_status(400)
            self.finish({"error": "expected {\"code_url\": ..., \"notify\": {...}}"})
            return
        try:
            if self.action == "scan":
                trade = self.sim.trades.scan(code_url)
            else:
                trade = self.sim.trades.pay_again(code_url) if duplicate else self.sim.trades.pay(code_url)
                self.sim.notifier.schedule(trade, plan)
        except TradeError as exc:
            self.set_status(409)
            self.finish({"error": exc.err_code, "message": exc.err_code_des})
            return
        self.finish(_trade_json(trade))


class ControlHandler(_SimHandler):
    """``POST control``: test knobs for the whole simulator.

    ``{"api_delay": 0..60}``; v3: ``{"v3_mode": "public_key" | "certificate"}`` (who
    signs answers and notifies: WeChat's migration from certificates to the public
    key), ``{"v3_rotate": true}`` (a new platform certificate signs from now on,
    the previous one still listed); refunds: ``{"refund": {"outcome": "success" |
    "abnormal" | "closed", "delay": seconds, "systemerror": N, "notify": {"drop",
    "copies", "delay"}}}`` (the next N refund calls fail, the first of them after
    taking the refund); bills: ``{"bill": {"not_ready": true}}`` (every bill
    answers "being made" until set false). Answers the state it leaves.
    """

    def post(self) -> None:
        try:
            knobs = json.loads(self.request.body or b"{}")
            delay = float(knobs.get("api_delay", self.sim.api_delay))
            if not 0 <= delay <= 60:
                raise ValueError
            mode = knobs.get("v3_mode")
            rotate = bool(knobs.get("v3_rotate", False))
            if (mode is not None or rotate) and self.sim.v3 is None:
                raise ValueError
            refund_knobs, systemerrors = RefundKnobs.parse(knobs.get("refund") or {}, self.sim.refunds.knobs)
            bill_knobs = knobs.get("bill") or {}
            not_ready = bill_knobs.get("not_ready", self.sim.bills.not_ready)
            if not isinstance(not_ready, bool) or set(bill_knobs) - {"not_ready"}:
                raise ValueError(bill_knobs)
            if mode is not None:
                assert self.sim.v3 is not None
                self.sim.v3.set_mode(str(mode))
        except (ValueError, TypeError, AttributeError):
            self.set_status(400)
            self.finish({"error": 'expected {"api_delay": 0..60, "v3_mode": "public_key"|"certificate", '
                                  '"v3_rotate": true|false, "refund": {"outcome": "success"|"abnormal"|"closed", '
                                  '"delay": s, "systemerror": n, "notify": {...}}, "bill": {"not_ready": true|false}} '
                                  '(v3 knobs only with v3 keys)'})
            return
        self.sim.api_delay = delay
        self.sim.refunds.set_knobs(refund_knobs, systemerrors)
        self.sim.bills.not_ready = not_ready
        state: dict[str, Any] = {"api_delay": delay, "refund": {**refund_knobs.as_json(),
                                                               "systemerror": self.sim.refunds.systemerrors_left},
                                 "bill": {"not_ready": not_ready}}
        if self.sim.v3 is not None:
            if rotate:
                self.sim.v3.rotate()
            state.update(v3_mode=self.sim.v3.mode, v3_serial=self.sim.v3.signer.serial,
                         v3_certificates=[c.serial for c in self.sim.v3.certificates])
        self.finish(state)


class TradeJsonHandler(_SimHandler):
    """``GET trades/{out_trade_no}``: what WeChat knows, including notify replies seen."""

    def get(self, out_trade_no: str) -> None:
        try:
            trade = self.sim.trades.get(out_trade_no)
        except TradeError as exc:
            self.set_status(404)
            self.finish({"error": exc.err_code})
            return
        answer = _trade_json(trade)
        answer["notify_replies"] = self.sim.notifier.deliveries.get(out_trade_no, [])
        self.finish(answer)


class RefundJsonHandler(_SimHandler):
    """``GET refunds/{out_refund_no}``: a refund as WeChat knows it, with the notify replies seen."""

    def get(self, out_refund_no: str) -> None:
        try:
            refund = self.sim.trades.get_refund(out_refund_no)
        except TradeError as exc:
            self.set_status(404)
            self.finish({"error": exc.err_code})
            return
        self.finish({**refund_messages.refund_json(refund),
                     "notify_replies": self.sim.notifier.refund_deliveries.get(out_refund_no, [])})


class PhonePageHandler(_SimHandler):
    """What the shopper's phone shows after scanning: the amount and a Pay button."""

    def get(self) -> None:
        self._show(self.get_argument("code_url", ""), done=False, error="")

    def post(self) -> None:
        code_url = self.get_argument("code_url", "")
        try:
            self.sim.notifier.schedule(self.sim.trades.pay(code_url), NotifyPlan())
        except TradeError as exc:
            self._show(code_url, done=False, error=exc.err_code_des)
            return
        self._show(code_url, done=True, error="")

    def _show(self, code_url: str, *, done: bool, error: str) -> None:
        try:
            trade: Trade | None = self.sim.trades.by_code_url(code_url)
        except TradeError as exc:
            trade, error = None, error or exc.err_code_des
        if trade is None:
            self.set_status(404)
        self.render("sandbox_phone.html", trade=trade, code_url=code_url, done=done, error=error)


def routes(prefix: str, sim: Simulator) -> list[tornado.web.URLSpec]:
    """The simulator's URL table under ``prefix`` (no trailing slash)."""
    p = prefix.rstrip("/")
    return [*(v3.routes(p, sim) if sim.v3 is not None else []),
        tornado.web.url(p + "/pay/unifiedorder", MerchantApiHandler, {"sim": sim, "action": "unifiedorder"}),
        tornado.web.url(p + "/pay/orderquery", MerchantApiHandler, {"sim": sim, "action": "orderquery"}),
        tornado.web.url(p + "/pay/closeorder", MerchantApiHandler, {"sim": sim, "action": "closeorder"}),
        tornado.web.url(p + "/secapi/pay/refund", MerchantApiHandler, {"sim": sim, "action": "refund"}),
        tornado.web.url(p + "/pay/refundquery", MerchantApiHandler, {"sim": sim, "action": "refundquery"}),
        tornado.web.url(p + "/pay/downloadbill", MerchantApiHandler, {"sim": sim, "action": "downloadbill"}),
        tornado.web.url(p + "/phone", PhonePageHandler, {"sim": sim}, name="sim_phone"),
        tornado.web.url(p + "/scan", PhoneJsonHandler, {"sim": sim, "action": "scan"}),
        tornado.web.url(p + "/pay", PhoneJsonHandler, {"sim": sim, "action": "pay"}),
        tornado.web.url(p + "/control", ControlHandler, {"sim": sim}),
        tornado.web.url(p + r"/trades/([A-Za-z0-9_\-|*]{1,32})", TradeJsonHandler, {"sim": sim}),
        tornado.web.url(p + r"/refunds/([A-Za-z0-9_\-|*@]{1,64})", RefundJsonHandler, {"sim": sim}),
    ]
