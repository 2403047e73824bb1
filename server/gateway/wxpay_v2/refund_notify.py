"""WeChat Pay v2's refund notify: ``<xml>`` with return_code, appid, mch_id,
nonce_str and ``req_info`` -- and no signature. ``req_info`` is
base64(AES-256-ECB(PKCS#7(``<root>`` XML))) under the key md5(API key) written
as 32 lower-case hex ASCII bytes; being able to decrypt it is the only proof
the notify is WeChat's.

ECB carries no integrity: a forger without the key cannot write a plaintext,
but could splice 16-byte blocks of genuine notifies. So the inner XML is held
to the same strict parser as every v2 document, and what it says is only a
claim about one of our refunds (out_refund_no, amount) that the caller checks
against its own record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from server.gateway.abc import REFUND_PROCESSING, REFUND_SUCCESS, RefundState
from server.gateway.errors import NotifyRejected
from server.gateway.wxpay_v2 import xmlcodec
from server.gateway.wxpay_v2.refunds import STATUSES, fen, parse_refund_time

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # a real one is about 2 KiB
MAX_REQ_INFO = 16 * 1024  # base64 characters; WeChat documents String(1024), real ones run longer
AES_BLOCK = 16


def req_info_key(api_key: str) -> bytes:
    """The AES-256 key: md5 of the API key as 32 lower-case hex ASCII bytes (not the 16 raw bytes)."""
    return hashlib.md5(api_key.encode("utf-8")).hexdigest().encode("ascii")


def decrypt_req_info(req_info: str, api_key: str) -> bytes:
    """The ``<root>`` XML inside ``req_info``; NotifyRejected saying why when there is none."""
    if len(req_info) > MAX_REQ_INFO:
        raise NotifyRejected(f"req_info is {len(req_info)} characters, more than {MAX_REQ_INFO}")
    try:
        sealed = base64.b64decode(req_info.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise NotifyRejected("req_info is not base64") from None
    if not sealed or len(sealed) % AES_BLOCK:
        raise NotifyRejected(f"req_info is {len(sealed)} bytes, not whole AES blocks")
    decryptor = Cipher(algorithms.AES(req_info_key(api_key)), modes.ECB()).decryptor()
    padded = decryptor.update(sealed) + decryptor.finalize()
    unpadder = padding.PKCS7(AES_BLOCK * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        # What a wrong key (or a forger without one) looks like almost every time.
        raise NotifyRejected("req_info does not decrypt under our API key (bad padding)") from None


def _text(fields: dict[str, str], name: str, limit: int) -> str:
    value = fields.get(name, "")
    if not 0 < len(value) <= limit:
        raise NotifyRejected(f"req_info: {name} missing or longer than {limit}")
    return value


def refund_state(fields: dict[str, str]) -> RefundState:
    """The refund a decrypted ``<root>`` describes."""
    out_refund_no = _text(fields, "out_refund_no", 64)
    out_trade_no = _text(fields, "out_trade_no", 32)
    refund_id = _text(fields, "refund_id", 32)
    amount = fen(fields.get("refund_fee"))
    if amount is None:
        raise NotifyRejected(f"req_info: refund_fee {fields.get('refund_fee', '')[:16]!r} is not an amount in fen")
    for name in ("total_fee", "settlement_refund_fee", "settlement_total_fee"):
        if name in fields and fen(fields[name]) is None:
            raise NotifyRejected(f"req_info: {name} {fields[name][:16]!r} is not an amount in fen")
    status = STATUSES.get(fields.get("refund_status", ""))
    if status is None or status == REFUND_PROCESSING:  # a notify reports an outcome
        raise NotifyRejected(f"req_info: refund_status {fields.get('refund_status', '')[:16]!r} is not an outcome")
    success_time = None
    if status == REFUND_SUCCESS:
        try:
            success_time = parse_refund_time(fields.get("success_time", ""))
        except ValueError:
            raise NotifyRejected(f"req_info: success_time {fields.get('success_time', '')[:32]!r} "
                                 "is not yyyy-MM-dd HH:mm:ss") from None
    return RefundState(out_refund_no, out_trade_no, refund_id, amount, status, success_time)


def read(body: bytes, *, appid: str, mch_id: str, api_key: str) -> RefundState:
    """Check and decrypt one refund notify for the merchant (appid, mch_id, API key)."""
    if len(body) > MAX_BODY:
        raise NotifyRejected(f"body is {len(body)} bytes, more than {MAX_BODY}")
    try:
        fields = xmlcodec.parse(body)
    except xmlcodec.MalformedXML as exc:
        raise NotifyRejected(f"malformed body: {exc}") from None
    if fields.get("return_code") != "SUCCESS":
        raise NotifyRejected("return_code is not SUCCESS")
    if fields.get("appid") != appid:
        raise NotifyRejected("appid is not ours")
    if fields.get("mch_id") != mch_id:
        raise NotifyRejected("mch_id is not ours")
    if not fields.get("req_info"):
        raise NotifyRejected("req_info missing")
    plain = decrypt_req_info(fields["req_info"], api_key)
    try:
        inner = xmlcodec.parse(plain, root_name="root")
    except xmlcodec.MalformedXML as exc:
        raise NotifyRejected(f"req_info is not a refund: {exc}") from None
    state = refund_state(inner)
    log.info("refund notify for %s: %s", state.out_refund_no, state.status)
    return state
