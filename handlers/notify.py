"""WeChat's payment and refund results: ``POST /wxpay/notify`` (API v2, XML),
``POST /wxpay/refund_notify`` (API v2 refunds, XML) and ``POST /wxpay/v3/notify``
(API v3, JSON, payments and refunds).

WeChat retries until it reads success, so success is sent only once the
payment is durably recorded, and a failure (with a reason) whenever a retry
could help or the message must not be believed. The two differ only in how
they answer; the gateway reads and verifies the body, the domain records it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import tornado.web
from pymongo.errors import PyMongoError
from tornado.http1connection import HTTP1Connection

from handlers.base import BaseHandler
from server.domain.payments import NotifyRejected, Payments
from server.domain.refunds import Refunds
from server.gateway.abc import PaymentGateway
from server.gateway.wxpay_v2 import xmlcodec
from server.lifecycle import InFlight

log = logging.getLogger(__name__)

MAX_NOTIFY_BODY = 64 * 1024


@tornado.web.stream_request_body
class NotifyHandler(BaseHandler):
    def initialize(self, requests: InFlight, payments: Payments,  # type: ignore[override]
                   count: Callable[[str], None], reader: PaymentGateway | None = None) -> None:
        """``count``: told each notify's outcome (acknowledged, rejected, storage_unavailable)."""
        super().initialize(requests)
        self.payments = payments
        self.count = count
        self.reader = reader  # reads this endpoint's notifies (the WeChat Pay API version it speaks)

    def check_xsrf_cookie(self) -> None:
        """Exempt: a notify carries no cookie; its signature is its proof."""

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        if self.request.method != "POST":
            return
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isascii() and declared.isdigit() and int(declared) > MAX_NOTIFY_BODY:
            self._reply_fail("body too large", 413)
            return
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            # Keep reading only what we might accept (a chunked body is counted below).
            connection.set_max_body_size(MAX_NOTIFY_BODY + 1)

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > MAX_NOTIFY_BODY:
            self._too_large = True
            self._chunks.clear()
        elif not self._too_large:
            self._chunks.append(chunk)

    async def post(self) -> None:
        if self._too_large:
            return self._reply_fail("body too large", 413)
        try:
            order_id = await self.record(b"".join(self._chunks))
        except NotifyRejected as exc:
            self.count("rejected")
            return self._reply_fail(str(exc), 400)
        except PyMongoError as exc:
            self.count("storage_unavailable")
            log.warning("notify not recorded, storage unavailable: %s", type(exc).__name__)
            return self._reply_fail("storage unavailable, retry later", 503)
        self.count("acknowledged")
        # The event itself (paid, or reported again) was logged where it was recorded: one line per notify.
        log.debug("notify for %s acknowledged", order_id)
        self._reply_ok()

    async def record(self, body: bytes) -> str:
        """Verify and record the notify; returns what it was about (for the log)."""
        return await self.payments.handle_notify(body, self.request.headers, self.reader)

    def get(self) -> None:
        self._reply_fail("use POST", 405)

    def _reply_fail(self, reason: str, status: int) -> None:
        if status != 503:  # storage failures were logged where they were caught
            log.warning("notify refused from %s: %s", self.request.remote_ip, reason)
        self.set_status(status)
        self._reply_failure(reason)

    def _reply_ok(self) -> None:
        """API v2: the XML WeChat reads as "recorded, stop sending"."""
        self._reply({"return_code": "SUCCESS", "return_msg": "OK"})

    def _reply_failure(self, reason: str) -> None:
        self._reply({"return_code": "FAIL", "return_msg": reason})

    def _reply(self, fields: dict[str, str]) -> None:
        self.set_header("Content-Type", "text/xml; charset=utf-8")
        self.finish(xmlcodec.render(fields))


class V3NotifyHandler(NotifyHandler):
    """API v3: 204 with no body is "recorded"; 4xx/5xx with ``{"code": "FAIL",
    "message"}`` makes WeChat send it again."""

    def _reply_ok(self) -> None:
        self.set_status(204)
        self.finish()

    def _reply_failure(self, reason: str) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"code": "FAIL", "message": reason}, ensure_ascii=False))


class RefundNotifyHandler(NotifyHandler):
    """API v2 refunds: the same answers as payments; what is inside is
    encrypted but not signed, so only a refund we asked for is believed."""

    def initialize(self, requests: InFlight, refunds: Refunds,  # type: ignore[override]
                   count: Callable[[str], None]) -> None:
        BaseHandler.initialize(self, requests)
        self.refunds = refunds
        self.count = count

    async def record(self, body: bytes) -> str:
        return await self.refunds.handle_notify(body, self.request.headers)
