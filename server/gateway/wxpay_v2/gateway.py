"""WeChat Pay API v2 behind the payment-gateway seam: XML over HTTPS, MD5 or
HMAC-SHA256 signatures under the API key (client.py does the calls)."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Mapping

from server.gateway.abc import (
    PAID_STATES,
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
from server.gateway.errors import NotifyRejected, WxPayBadResponse
from server.gateway.wxpay_v2 import bills, refund_notify, refunds, signing, xmlcodec
from server.gateway.wxpay_v2.client import WxPayClient, parse_wx_time

# An amount in fen: ASCII digits only (str.isdigit() takes "²", which int() refuses).
FEN = re.compile(r"[0-9]{1,12}")


def _paid_at(time_end: str) -> float:
    try:
        return parse_wx_time(time_end).timestamp()
    except ValueError:
        return time.time()


class WxPayV2Gateway(PaymentGateway):
    def __init__(self, client: WxPayClient, *, bill_gzip: bool = True):
        self.client = client
        self.bill_gzip = bill_gzip  # ask for bills as gzip (tar_type=GZIP): a tenth of the bytes

    async def create_native(self, order: NativeOrder) -> NativeCheckout:
        reply = await self.client.unified_order(
            out_trade_no=order.out_trade_no, body=order.description, total_fee=order.total_fee,
            notify_url=order.notify_url, product_id=order.product_id, time_expire=order.expires_at,
            client_ip=order.client_ip)
        return NativeCheckout(code_url=reply["code_url"], prepay_id=reply.get("prepay_id", ""))

    async def query(self, out_trade_no: str) -> Trade:
        reply = await self.client.order_query(out_trade_no)
        state = reply.get("trade_state", "")
        if state not in PAID_STATES:
            return Trade(out_trade_no, state)
        fee = reply.get("total_fee", "")
        if not FEN.fullmatch(fee) or not reply.get("transaction_id"):
            raise WxPayBadResponse(f"orderquery for {out_trade_no}: paid without transaction_id or total_fee")
        return Trade(out_trade_no, state, Payment(out_trade_no, reply["transaction_id"], int(fee),
                                                  _paid_at(reply.get("time_end", ""))))

    async def close(self, out_trade_no: str) -> None:
        await self.client.close_order(out_trade_no)

    def read_notify(self, body: bytes, headers: Mapping[str, str]) -> Notice:
        try:
            fields = xmlcodec.parse(body)
        except xmlcodec.MalformedXML as exc:
            raise NotifyRejected(f"malformed body: {exc}") from None
        if fields.get("return_code") != "SUCCESS":
            raise NotifyRejected("return_code is not SUCCESS")
        merchant = self.client.merchant
        accepted = signing.accepted_sign_types(merchant.sign_type)
        if not signing.verify(fields, merchant.key, accepted):
            sign_type = signing.sign_type_of(fields)
            if sign_type is not None and sign_type not in accepted:
                # Genuine or not, WeChat signs our notifies the way we place orders.
                raise NotifyRejected(f"signature does not verify: {sign_type} is weaker than "
                                     f"the {merchant.sign_type} this merchant signs with")
            raise NotifyRejected("signature does not verify")
        if fields.get("appid") != merchant.appid:
            raise NotifyRejected("appid is not ours")
        if fields.get("mch_id") != merchant.mch_id:
            raise NotifyRejected("mch_id is not ours")
        order_id = fields.get("out_trade_no", "")
        if not 0 < len(order_id) <= 32:
            raise NotifyRejected(f"unknown order {order_id[:32]!r}")
        if fields.get("result_code") != "SUCCESS":
            return Notice(order_id, None, fields.get("err_code_des", ""))
        total_fee = fields.get("total_fee", "")
        if not FEN.fullmatch(total_fee):
            raise NotifyRejected(f"total_fee {total_fee[:16]!r} is not an amount in fen")
        transaction_id = fields.get("transaction_id", "")
        if not transaction_id or len(transaction_id) > 32:
            raise NotifyRejected("transaction_id missing")
        return Notice(order_id, Payment(order_id, transaction_id, int(total_fee),
                                        _paid_at(fields.get("time_end", ""))))

    async def refund(self, request: RefundRequest) -> RefundState:
        reply = await self.client.refund(
            out_refund_no=request.out_refund_no, total_fee=request.total_fee, refund_fee=request.refund_fee,
            out_trade_no=request.out_trade_no, transaction_id=request.transaction_id or "",
            refund_desc=request.reason, notify_url=request.notify_url)
        return refunds.accepted(reply, request)

    async def query_refund(self, out_refund_no: str) -> RefundState:
        return refunds.queried(await self.client.refund_query(out_refund_no), out_refund_no)

    def read_refund_notify(self, body: bytes, headers: Mapping[str, str]) -> RefundState:
        m = self.client.merchant
        return refund_notify.read(body, appid=m.appid, mch_id=m.mch_id, api_key=m.key)

    async def download_bill(self, date: dt.date) -> Bill:
        return await bills.download(self.client, date, gzip=self.bill_gzip)
