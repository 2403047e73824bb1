"""WeChat Pay API v3 behind the payment-gateway seam: JSON over HTTPS, RSA
signatures both ways, notify resources in AES-GCM under the APIv3 key
(client.py does the calls, verifier.py knows the platform keys).

Nonces of notifies are not remembered: a replay inside the five-minute window
is the same payment again, and recording a payment is idempotent (one
conditional update), so a nonce cache would add state and change nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from server.gateway.abc import (
    PAID_STATES,
    SUCCESS,
    Bill,
    NativeCheckout,
    NativeOrder,
    Notice,
    Payment,
    PaymentGateway,
    RefundRequest,
    RefundState,
    Trade,
)
from server.gateway.errors import GatewayUnavailable, NotifyRejected
from server.gateway.wxpay_v3 import bills, crypto, refunds
from server.gateway.wxpay_v3.client import WxPayV3Client, parse_rfc3339
from server.gateway.wxpay_v3.verifier import SignatureRejected, UnknownSerial

log = logging.getLogger(__name__)

AEAD = "AEAD_AES_256_GCM"


def _paid_at(success_time: object) -> float:
    try:
        return parse_rfc3339(str(success_time)).timestamp()
    except ValueError:
        return time.time()


def _amount(trade: Mapping[str, Any]) -> int | None:
    amount = trade.get("amount")
    total = amount.get("total") if isinstance(amount, dict) else None
    return total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None


class WxPayV3Gateway(PaymentGateway):
    def __init__(self, client: WxPayV3Client, *, bill_gzip: bool = True):
        self.client = client
        self.bill_gzip = bill_gzip  # ask for bills as gzip (tar_type=GZIP): a tenth of the bytes

    async def create_native(self, order: NativeOrder) -> NativeCheckout:
        reply = await self.client.create_native(
            out_trade_no=order.out_trade_no, description=order.description, total=order.total_fee,
            notify_url=order.notify_url, time_expire=order.expires_at, client_ip=order.client_ip)
        return NativeCheckout(code_url=reply["code_url"], prepay_id="")  # v3 Native answers only code_url

    async def query(self, out_trade_no: str) -> Trade:
        reply = await self.client.query(out_trade_no)
        state = str(reply.get("trade_state", ""))
        if state not in PAID_STATES:
            return Trade(out_trade_no, state)
        total, transaction_id = _amount(reply), reply.get("transaction_id")
        if total is None or not isinstance(transaction_id, str) or not transaction_id:
            raise GatewayUnavailable("BAD_RESPONSE",
                                     f"query for {out_trade_no}: paid without transaction_id or amount.total")
        return Trade(out_trade_no, state, Payment(out_trade_no, transaction_id, total,
                                                  _paid_at(reply.get("success_time"))))

    async def close(self, out_trade_no: str) -> None:
        await self.client.close(out_trade_no)

    def read_notify(self, body: bytes, headers: Mapping[str, str]) -> Notice:
        notify = self._verified(body, headers)
        event = str(notify.get("event_type", ""))
        if event.startswith("REFUND."):
            refund = self._refund(event, notify)
            return Notice(refund.out_trade_no, None, refund=refund)
        if not event.startswith("TRANSACTION."):
            raise NotifyRejected(f"event_type {event[:40]!r} is not a payment result, nor a refund one")
        return self._payment(notify)

    def read_refund_notify(self, body: bytes, headers: Mapping[str, str]) -> RefundState:
        notify = self._verified(body, headers)
        event = str(notify.get("event_type", ""))
        if not event.startswith("REFUND."):
            raise NotifyRejected(f"event_type {event[:40]!r} is not a refund result")
        return self._refund(event, notify)

    def _refund(self, event: str, notify: Mapping[str, Any]) -> RefundState:
        state = refunds.from_notify(event, self._decrypt(notify, "refund"), self.client.mchid)
        log.info("refund notify for %s: %s", state.out_refund_no, state.status)
        return state

    def _verified(self, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """The notify as JSON, once its signature over the raw bytes checked out."""
        verifier = self.client.verifier
        try:
            verifier.check(headers, body)  # over the raw bytes, before anything is parsed
        except UnknownSerial as exc:
            # Cannot wait here: refuse now, fetch in the background; WeChat sends it again.
            verifier.refresh_soon("notify under an unknown serial")
            raise NotifyRejected(str(exc)) from None
        except SignatureRejected as exc:
            raise NotifyRejected(str(exc)) from None
        try:
            notify = json.loads(body)
        except ValueError:
            raise NotifyRejected("body is not JSON") from None
        if not isinstance(notify, dict):
            raise NotifyRejected("body is not a JSON object")
        return notify

    def _payment(self, notify: Mapping[str, Any]) -> Notice:
        trade = self._decrypt(notify, "transaction")
        if trade.get("mchid") != self.client.mchid:
            raise NotifyRejected("mchid is not ours")
        if trade.get("appid") != self.client.appid:
            raise NotifyRejected("appid is not ours")
        order_id = trade.get("out_trade_no")
        if not isinstance(order_id, str) or not 0 < len(order_id) <= 32:
            raise NotifyRejected(f"unknown order {str(order_id)[:32]!r}")
        state = str(trade.get("trade_state", ""))
        if state != SUCCESS:
            return Notice(order_id, None, f"{state}: {trade.get('trade_state_desc', '')}".strip(": "))
        total = _amount(trade)
        if total is None:
            raise NotifyRejected("amount.total is not an amount in fen")
        transaction_id = trade.get("transaction_id")
        if not isinstance(transaction_id, str) or not 0 < len(transaction_id) <= 32:
            raise NotifyRejected("transaction_id missing")
        return Notice(order_id, Payment(order_id, transaction_id, total, _paid_at(trade.get("success_time"))))

    def _decrypt(self, notify: Mapping[str, Any], original_type: str) -> dict[str, Any]:
        resource = notify.get("resource")
        if notify.get("resource_type") != "encrypt-resource" or not isinstance(resource, dict):
            raise NotifyRejected("no encrypted resource")
        if resource.get("algorithm") != AEAD:
            raise NotifyRejected(f"resource algorithm {str(resource.get('algorithm'))[:32]!r} is not {AEAD}")
        # A payment resource without original_type is taken as one (older notifies); a refund must say so.
        if resource.get("original_type", "transaction") != original_type:
            raise NotifyRejected(f"resource is a {str(resource.get('original_type'))[:32]!r}, not a {original_type}")
        try:
            plain = crypto.decrypt_resource(self.client.apiv3_key, str(resource.get("nonce", "")),
                                            str(resource.get("associated_data", "")),
                                            str(resource.get("ciphertext", "")))
            trade = json.loads(plain)
        except crypto.DecryptError as exc:
            raise NotifyRejected(f"resource {exc}") from None
        except ValueError:
            raise NotifyRejected("resource is not JSON") from None
        if not isinstance(trade, dict):
            raise NotifyRejected("resource is not a JSON object")
        return trade

    async def refund(self, request: RefundRequest) -> RefundState:
        answer = await self.client.refund(
            out_refund_no=request.out_refund_no, total=request.total_fee, refund=request.refund_fee,
            reason=request.reason, notify_url=request.notify_url, out_trade_no=request.out_trade_no,
            transaction_id=request.transaction_id or "")
        return refunds.from_answer(answer, request.out_refund_no)

    async def query_refund(self, out_refund_no: str) -> RefundState:
        return refunds.from_answer(await self.client.query_refund(out_refund_no), out_refund_no)

    async def download_bill(self, date: dt.date) -> Bill:
        return await bills.download(self.client, date, gzip=self.bill_gzip)
