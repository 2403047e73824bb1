"""What the simulator says about refunds in v2's words: the refund and
refundquery answers' fields, the refund notify with its encrypted ``req_info``,
and the test-facing JSON view.

The ``req_info`` cipher is WeChat's documented recipe (AES-256-ECB, PKCS#7,
key = md5(API key) as 32 lowercase hex characters) on the ``cryptography``
package, independent of the merchant client that will decrypt it.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from server.gateway.wxpay_v2 import signing, xmlcodec
from server.simulator.trades import REFUND_SUCCESS, Refund, Trade

# Where the money went back to and where it came from, as WeChat names them.
RECEIVED_ACCOUNT = "支付用户零钱"
REFUND_ACCOUNT = "REFUND_SOURCE_UNSETTLED_FUNDS"


def beijing(epoch: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return time.strftime(fmt, time.gmtime(epoch + 8 * 3600))


def refund_answer(refund: Refund) -> dict[str, str]:
    """``/secapi/pay/refund``'s fields on success (before return_code/appid/sign)."""
    return {"transaction_id": refund.transaction_id, "out_trade_no": refund.out_trade_no,
            "out_refund_no": refund.out_refund_no, "refund_id": refund.refund_id,
            "refund_fee": str(refund.refund_fee), "total_fee": str(refund.total_fee),
            "cash_fee": str(refund.total_fee), "cash_refund_fee": str(refund.refund_fee),
            "coupon_refund_fee": "0", "coupon_refund_count": "0"}


def query_answer(trade: Trade, refunds: list[Refund]) -> dict[str, str]:
    """``/pay/refundquery``'s fields: the order's amounts and each refund under ``_$n``."""
    fields = {"transaction_id": refunds[0].transaction_id, "out_trade_no": trade.out_trade_no,
              "total_fee": str(trade.total_fee), "cash_fee": str(trade.total_fee), "fee_type": "CNY",
              "refund_count": str(len(refunds)), "refund_fee": str(sum(r.refund_fee for r in refunds))}
    for n, refund in enumerate(refunds):
        fields.update({
            f"out_refund_no_{n}": refund.out_refund_no, f"refund_id_{n}": refund.refund_id,
            f"refund_channel_{n}": "ORIGINAL", f"refund_fee_{n}": str(refund.refund_fee),
            f"settlement_refund_fee_{n}": str(refund.refund_fee), f"refund_status_{n}": refund.status,
            f"refund_account_{n}": REFUND_ACCOUNT, f"refund_recv_accout_{n}": RECEIVED_ACCOUNT,
        })
        if refund.success_time is not None:
            fields[f"refund_success_time_{n}"] = beijing(refund.success_time)
    return fields


def req_info_fields(refund: Refund) -> dict[str, str]:
    """The ``<root>`` a refund notify's req_info decrypts to."""
    fields = {"out_refund_no": refund.out_refund_no, "refund_id": refund.refund_id,
              "transaction_id": refund.transaction_id, "out_trade_no": refund.out_trade_no,
              "total_fee": str(refund.total_fee), "refund_fee": str(refund.refund_fee),
              "settlement_total_fee": str(refund.total_fee), "settlement_refund_fee": str(refund.refund_fee),
              "refund_status": refund.status}
    if refund.status == REFUND_SUCCESS and refund.success_time is not None:
        fields["success_time"] = beijing(refund.success_time)
    fields.update(refund_recv_accout=RECEIVED_ACCOUNT, refund_account=REFUND_ACCOUNT,
                  refund_request_source="API")
    return fields


def encrypt_req_info(plaintext: bytes, api_key: str) -> str:
    """base64(AES-256-ECB(PKCS#7(plaintext))), key = md5(API key) in lowercase hex."""
    # MD5 and ECB are WeChat's choice, not ours: the merchant can only read what WeChat sends.
    key = hashlib.md5(api_key.encode()).hexdigest().encode()
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def root_xml(fields: dict[str, str]) -> bytes:
    """The same flat document as v2's ``<xml>``, under the ``<root>`` req_info uses."""
    body = xmlcodec.render(fields)
    return b"<root>" + body[len(b"<xml>"):-len(b"</xml>")] + b"</root>"


def v2_notify(refund: Refund, api_key: str, appid: str, mch_id: str) -> bytes:
    """A v2 refund notify: unsigned, its content only in the encrypted req_info."""
    return xmlcodec.render({"return_code": "SUCCESS", "appid": appid, "mch_id": mch_id,
                            "nonce_str": signing.nonce(),
                            "req_info": encrypt_req_info(root_xml(req_info_fields(refund)), api_key)})


def refund_json(refund: Refund) -> dict[str, Any]:
    """The test-facing view of a refund."""
    return {"out_refund_no": refund.out_refund_no, "refund_id": refund.refund_id,
            "out_trade_no": refund.out_trade_no, "transaction_id": refund.transaction_id,
            "total_fee": refund.total_fee, "refund_fee": refund.refund_fee, "status": refund.status,
            "api": refund.api, "notify_url": refund.notify_url, "reason": refund.reason,
            "success_time": beijing(refund.success_time) if refund.success_time is not None else None}
