"""Delivers payment and refund notifies the way WeChat does: POSTed to the
order's (refund's) ``notify_url``, repeated on WeChat's schedule until the
merchant acknowledges. A v2 trade's notify is signed XML, acknowledged by
``return_code=SUCCESS`` (a v2 refund's carries an encrypted ``req_info`` and no
sign); a v3 one is signed JSON with an encrypted resource, acknowledged by 200/204.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from server.gateway.wxpay_v2 import signing, xmlcodec
from server.simulator import refund_messages, v3_messages
from server.simulator.trades import V3, Refund, Trade
from server.simulator.v3_keys import V3Keys

log = logging.getLogger(__name__)

# Seconds between attempts, from WeChat Pay's notify documentation
# (15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h).
RETRY_SCHEDULE = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600,
                  10800, 10800, 10800, 21600, 21600)


@dataclass(frozen=True)
class NotifyPlan:
    """Test knobs for one payment's notify."""

    drop: bool = False   # never send it (the merchant must find the payment by orderquery)
    copies: int = 1      # send this many concurrent copies of the first attempt
    delay: float = 0.0   # seconds before the first attempt
    coupons: int = 0     # the shopper paid partly with this many coupons (coupon_*_N fields)
    omit_sign_type: bool = False  # HMAC-SHA256 trade: no sign_type field, as WeChat often sends it


class Notifier:
    def __init__(self, session: aiohttp.ClientSession, key: str, appid: str, mch_id: str,
                 speed: float = 1.0, v3: V3Keys | None = None):
        self._session = session
        self._v3 = v3
        self._key = key
        self._appid = appid
        self._mch_id = mch_id
        self.speed = speed
        self._tasks: set[asyncio.Task[None]] = set()
        self.deliveries: dict[str, list[str]] = {}  # out_trade_no -> replies seen
        self.refund_deliveries: dict[str, list[str]] = {}  # out_refund_no -> replies seen

    def message(self, trade: Trade, plan: NotifyPlan | None = None) -> dict[str, str]:
        plan = plan or NotifyPlan()
        # WeChat signs the notify with the sign type the order was placed with.
        sign_type = trade.request.get("sign_type") or signing.MD5
        fields = {
            "return_code": "SUCCESS",
            "return_msg": "OK",
            "appid": self._appid,
            "mch_id": self._mch_id,
            "nonce_str": signing.nonce(),
            "result_code": "SUCCESS",
            "openid": trade.openid,
            "is_subscribe": "N",
            "trade_type": trade.request.get("trade_type", "NATIVE"),
            "bank_type": "CMC",
            "total_fee": str(trade.total_fee),
            "fee_type": "CNY",
            "cash_fee": str(trade.total_fee),
            "transaction_id": trade.transaction_id,
            "out_trade_no": trade.out_trade_no,
            "time_end": trade.time_end,
            **_coupon_fields(trade.total_fee, plan.coupons),
        }
        if sign_type == signing.HMAC_SHA256 and plan.omit_sign_type:
            return {**fields, "sign": signing.sign(fields, self._key, sign_type)}
        return signing.signed(fields, self._key, sign_type)

    def schedule(self, trade: Trade, plan: NotifyPlan) -> None:
        if plan.drop:
            log.info("simulator: notify for %s dropped on purpose", trade.out_trade_no)
            return
        replies = self.deliveries.setdefault(trade.out_trade_no, [])
        self._start(self._deliver(trade.out_trade_no, lambda: self._post_payment(trade, plan, replies), plan))

    def schedule_refund(self, refund: Refund, plan: NotifyPlan) -> None:
        """The refund's outcome to its notify_url (none given: WeChat would use the
        one configured on its merchant platform; the simulator has none)."""
        if plan.drop or not refund.notify_url:
            log.info("simulator: refund notify for %s not sent (%s)", refund.out_refund_no,
                     "dropped on purpose" if plan.drop else "no notify_url")
            return
        replies = self.refund_deliveries.setdefault(refund.out_refund_no, [])
        self._start(self._deliver(refund.out_refund_no, lambda: self._post_refund(refund, replies), plan))

    def _start(self, delivery: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(delivery)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, label: str, post: Callable[[], Awaitable[bool]], plan: NotifyPlan) -> None:
        delays = (plan.delay, *RETRY_SCHEDULE)
        for attempt, delay in enumerate(delays):
            await asyncio.sleep(delay / self.speed if attempt else delay)
            copies = plan.copies if attempt == 0 else 1
            results = await asyncio.gather(*(post() for _ in range(copies)))
            if any(results):
                return
        log.warning("simulator: notify for %s never acknowledged", label)

    async def _post_payment(self, trade: Trade, plan: NotifyPlan, replies: list[str]) -> bool:
        if trade.api == V3:
            assert self._v3 is not None  # only the v3 face places v3 trades
            data, headers = v3_messages.notify_message(self._v3, trade, plan.coupons)
        else:
            data, headers = xmlcodec.render(self.message(trade, plan)), {"Content-Type": "text/xml"}
        return await self._post(trade.request["notify_url"], data, headers, trade.api, replies, trade.out_trade_no)

    def refund_message(self, refund: Refund) -> bytes:
        """A v2 refund notify's body."""
        return refund_messages.v2_notify(refund, self._key, self._appid, self._mch_id)

    async def _post_refund(self, refund: Refund, replies: list[str]) -> bool:
        if refund.api == V3:
            assert self._v3 is not None  # only the v3 face takes v3 refunds
            data, headers = v3_messages.refund_notify_message(self._v3, refund)
        else:
            data, headers = self.refund_message(refund), {"Content-Type": "text/xml"}
        return await self._post(refund.notify_url, data, headers, refund.api, replies, refund.out_refund_no)

    async def _post(self, url: str, data: bytes, headers: dict[str, str], api: str, replies: list[str],
                    label: str) -> bool:
        try:
            async with self._session.post(url, data=data, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=10)) as resp:
                status, body = resp.status, await resp.content.read(65536)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.info("simulator: notify for %s failed: %s", label, exc)
            replies.append("UNREACHABLE")
            return False
        reply = _v3_reply(status, body) if api == V3 else _v2_reply(body)
        replies.append(reply)
        return reply == "SUCCESS"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _v2_reply(body: bytes) -> str:
    try:
        return xmlcodec.parse(body).get("return_code", "")
    except xmlcodec.MalformedXML:
        return "MALFORMED"


def _v3_reply(status: int, body: bytes) -> str:
    """v3: any 2xx acknowledges (WeChat reads no body then); otherwise the
    answer's ``code`` (``FAIL``) or the status, for the trade's record."""
    if 200 <= status < 300:
        return "SUCCESS"
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    return str(code) if code else f"HTTP {status}"


def _coupon_fields(total_fee: int, coupons: int) -> dict[str, str]:
    """WeChat's fields for a payment partly made with coupons of 1 fen each.

    ``total_fee`` stays the order's amount; ``cash_fee`` is what the shopper paid
    in cash (at least 1 fen, so at most ``total_fee - 1`` coupons); odd-numbered
    coupons are NO_CASH, which WeChat reports through ``settlement_total_fee``.
    """
    n = max(0, min(coupons, total_fee - 1))
    if not n:
        return {}
    fields = {"coupon_count": str(n), "coupon_fee": str(n), "cash_fee": str(total_fee - n),
              "cash_fee_type": "CNY"}
    for i in range(n):
        fields.update({f"coupon_type_{i}": "NO_CASH" if i % 2 else "CASH",
                       f"coupon_id_{i}": str(2000000000000000000 + i), f"coupon_fee_{i}": "1"})
    no_cash = n // 2
    if no_cash:
        fields["settlement_total_fee"] = str(total_fee - no_cash)
    return fields
