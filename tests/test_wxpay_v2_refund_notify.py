"""``WxPayV2Gateway.read_refund_notify``: the unsigned v2 refund notify whose
``req_info`` is AES-256-ECB under md5(API key), checked for merchant and shape,
and every malformed or hostile one refused with its reason.

What vouches for the decryption is not our own encryption:

- a golden vector: a req_info WeChat really sent, with the API key it was sent
  under, published in silenceper/wechat, pay/notify/refund_test.go at commit
  d5a67eaf2912585e220563d55339771feb496451 (its source: studygolang.com/articles/11811).
  That test only logs the plaintext, so what it must say comes from a peer:
- wechatpy 1.8.18 (PyPI), whose ``WeChatRefundCrypto`` decrypts req_info on
  its own (its ``RefundCrypto`` also encrypts, for a notify built by a peer).

The other notifies here are sealed by ``seal`` below, written against
``cryptography`` directly (AES-256-ECB, PKCS#7 over 16-byte blocks, as WeChat's
Java side does), never with server.gateway's code.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from wechatpy.crypto import RefundCrypto, WeChatRefundCrypto  # type: ignore[import-untyped]

from server.gateway.abc import REFUND_ABNORMAL, REFUND_CLOSED, REFUND_SUCCESS, RefundState
from server.gateway.errors import NotifyRejected
from server.gateway.wxpay_v2 import signing
from server.gateway.wxpay_v2.client import Merchant, WxPayClient
from server.gateway.wxpay_v2.gateway import WxPayV2Gateway

# -- the golden vector: silenceper/wechat pay/notify/refund_test.go @ d5a67eaf2912585e220563d55339771feb496451
GOLDEN_KEY = "ziR0QKsTUfMOuochC9RfCdmfHECorQAP"
GOLDEN_REQ_INFO = (
    "YYwp8C48th0wnQzTqeI+41pflB26v+smFj9z6h9RPBgxTyZyxc+4YNEz7QEgZNWj/6rIb2MfyWMZmCc41CfjKSssoSZPXxOhUayb6KvNSZ1p6frO"
    "X1PDWzhyruXK7ouNND+gDsG4yZ0XXzsL4/pYNwLLba/71QrnkJ/BHcByk4EXnglju5DLup9pJQSnTxjomI9Rxu57m9jg5lLQFxMWXyeASZJNvof0"
    "ulnHlWJswS4OxKOkmW7VEyKyLGV6npoOm03Qsx2wkRxLsSa9gPpg4hdaReeUqh1FMbm7aWjyrVYT/MEZWg98p4GomEIYvz34XfDncTezX4bf/ZiS"
    "LXt79aE1/YTZrYfymXeCrGjlbe0rg/T2ezJHAC870u2vsVbY1/KcE2A443N+DEnAziXlBQ1AeWq3Rqk/O6/TMM0lomzgctAOiAMg+bh5+Gu1ubA9"
    "O3E+vehULydD5qx2o6i3+qA9ORbH415NyRrQdeFq5vmCiRikp5xYptWiGZA0tkoaLKMPQ4ndE5gWHqiBbGPfULZWokI+QjjhhBmwgbd6J0VqpRor"
    "wOuzC/BHdkP72DCdNcm7IDUpggnzBIy0+seWIkcHEryKjge3YDHpJeQCqrAH0CgxXHDt1xtbQbST1VqFyuhPhUjDXMXrknrGPN/oE1t0rLRq+78c"
    "I+k8xe5E6seeUXQsEe8r3358mpcDYSmXWSXVZxK6er9EF98APqHwcndyEJD2YyCh/mMVhERuX+7kjlRXSiNUWa/Cv/XAKFQuvUYA5ea2eYWtPRHa"
    "4DpyuF1SNsaqVKfgqKXZrJHfAgslVpSVqUpX4zkKszHF4kwMZO3M7J1P94Mxa7Tm9mTOJePOoHPXeEB+m9rX6pSfoi3mJDQ5inJ+Vc4gOkg/Wd/l"
    "qiy6TTyP/dHDN6/v+AuJx5AXBo/2NDD3fWhHjkqEKIuARr2ClZt9ZRQO4HkXdZo7CN06sGCHk48Tg8PmxnxKcMZm7Aoquv5yMIM2gWSWIRJhwJ8c"
    "UpafIHc+GesDlbF6Zbt+/KXkafJAQq2RklEN+WvZ/zFz113EPgWPjp16TwBoziq96MMekvWKY/vdhjol8VFtGH9F61Oy1Xwf6DJtPw==")
# The test publishes no appid/mch_id; the outer <xml> is ours to write.
APPID, MCH_ID = "wx2421b1c4370ec43b", "10000100"
KEY = "192006250b4c09247ec02edce69f6a2d"  # WeChat's documented sample API key
BEIJING = dt.timezone(dt.timedelta(hours=8))

ROOT = {
    "out_refund_no": "R202401010001", "out_trade_no": "ORD202401010001",
    "refund_account": "REFUND_SOURCE_RECHARGE_FUNDS", "refund_fee": "300",
    "refund_id": "50000404922024010102468056157", "refund_recv_accout": "支付用户零钱",
    "refund_request_source": "API", "refund_status": "SUCCESS", "settlement_refund_fee": "300",
    "settlement_total_fee": "880", "success_time": "2024-01-01 12:00:05", "total_fee": "880",
    "transaction_id": "4200000015202401016947025404",
}


def gateway(key: str = KEY) -> WxPayV2Gateway:
    # read_refund_notify never calls out: the session is never used.
    return WxPayV2Gateway(WxPayClient(None, "http://127.0.0.1:9", Merchant(APPID, MCH_ID, key)))  # type: ignore[arg-type]


def root_xml(fields: dict[str, str], root: str = "root") -> bytes:
    inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items())
    return f"<{root}>{inner}</{root}>".encode()


def seal(plaintext: bytes, api_key: str = KEY, *, pad: bool = True) -> str:
    """req_info as WeChat makes it, with cryptography directly."""
    if pad:
        padder = padding.PKCS7(128).padder()
        plaintext = padder.update(plaintext) + padder.finalize()
    key = hashlib.md5(api_key.encode()).hexdigest().encode()
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return base64.b64encode(encryptor.update(plaintext) + encryptor.finalize()).decode()


def notify(req_info: str | None, **outer: str) -> bytes:
    fields = {"return_code": "SUCCESS", "appid": APPID, "mch_id": MCH_ID, "nonce_str": "TeqClE3i0mvn3DrK",
              **({"req_info": req_info} if req_info is not None else {}), **outer}
    return ("<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items()) + "</xml>").encode()


def beijing(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING).timestamp()


# -- what WeChat sent --------------------------------------------------------------

def test_the_published_req_info_reads_as_wechatpy_reads_it() -> None:
    body = notify(GOLDEN_REQ_INFO)
    peer = WeChatRefundCrypto(GOLDEN_KEY).decrypt_message(body, APPID, MCH_ID)
    state = gateway(GOLDEN_KEY).read_refund_notify(body, {})
    assert peer["refund_status"] == "SUCCESS"
    assert state == RefundState(out_refund_no=peer["out_refund_no"], out_trade_no=peer["out_trade_no"],
                                refund_id=peer["refund_id"], amount=int(peer["refund_fee"]), status=REFUND_SUCCESS,
                                success_time=beijing(peer["success_time"]))


def test_the_published_req_info_under_another_key_is_refused() -> None:
    with pytest.raises(NotifyRejected, match="req_info"):
        gateway(KEY).read_refund_notify(notify(GOLDEN_REQ_INFO), {})


def test_a_notify_sealed_by_wechatpy_reads_the_same_as_wechatpy_reads_ours() -> None:
    # wechatpy pads to 32-byte blocks; WeChat's Java (AES/ECB/PKCS5Padding) to
    # 16. A plaintext 16-31 bytes past a 32-byte boundary pads alike in both.
    plain = root_xml(ROOT)
    plain += b" " * ((16 - len(plain) % 32) % 32)
    assert len(plain) % 32 >= 16
    by_peer = RefundCrypto(hashlib.md5(KEY.encode()).hexdigest().encode()).encrypt(plain).decode()
    by_us = seal(root_xml(ROOT))
    for req_info in (by_peer, by_us):
        peer = WeChatRefundCrypto(KEY).decrypt_message(notify(req_info), APPID, MCH_ID)
        state = gateway().read_refund_notify(notify(req_info), {})
        assert (state.out_refund_no, state.refund_id, state.amount) == (
            peer["out_refund_no"], peer["refund_id"], int(peer["refund_fee"]))


@pytest.mark.parametrize("wechat_status, ours", [
    ("SUCCESS", REFUND_SUCCESS), ("REFUNDCLOSE", REFUND_CLOSED), ("CHANGE", REFUND_ABNORMAL)])
def test_each_outcome_maps_to_ours(wechat_status: str, ours: str) -> None:
    fields = {**ROOT, "refund_status": wechat_status}
    if wechat_status != "SUCCESS":
        del fields["success_time"]
    state = gateway().read_refund_notify(notify(seal(root_xml(fields))), {})
    assert state.status == ours and state.amount == 300 and state.out_trade_no == "ORD202401010001"
    assert state.success_time == (beijing(ROOT["success_time"]) if ours == REFUND_SUCCESS else None)


# -- what must not be believed ---------------------------------------------------------

XXE = (b'<?xml version="1.0"?><!DOCTYPE root [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       b"<root><out_refund_no>&x;</out_refund_no></root>")
LAUGHS = (b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
          b"<root><out_refund_no>&b;</out_refund_no></root>")
Case = Callable[[], bytes]


def _without(name: str) -> dict[str, str]:
    return {k: v for k, v in ROOT.items() if k != name}


HOSTILE: list[tuple[str, Case, str]] = [
    ("not XML", lambda: b"refund!", "malformed body"),
    ("empty", lambda: b"", "malformed body"),
    ("outer DTD", lambda: b'<!DOCTYPE xml [<!ENTITY x "y">]><xml><return_code>&x;</return_code></xml>', "DTDs"),
    ("return_code FAIL", lambda: notify(seal(root_xml(ROOT)), return_code="FAIL"), "return_code"),
    ("other appid", lambda: notify(seal(root_xml(ROOT)), appid="wx0000000000000000"), "appid is not ours"),
    ("other mch_id", lambda: notify(seal(root_xml(ROOT)), mch_id="1900000109"), "mch_id is not ours"),
    ("no req_info", lambda: notify(None), "req_info missing"),
    ("req_info not base64", lambda: notify("@@not*base64@@"), "not base64"),
    ("req_info not whole blocks", lambda: notify(base64.b64encode(b"x" * 15).decode()), "not whole AES blocks"),
    ("req_info under another key", lambda: notify(seal(root_xml(ROOT), "0" * 32)), "req_info"),
    ("no padding", lambda: notify(seal(b"<root><a>1</a></root>" + b"\x00" * 11, pad=False)), "bad padding"),
    ("too large", lambda: notify(seal(root_xml(ROOT)), filler="x" * 70_000), "more than"),
    ("req_info too large", lambda: notify("A" * 20_000), "req_info is 20000 characters"),
    ("XXE inside", lambda: notify(seal(XXE)), "DTDs are not allowed"),
    ("entity expansion inside", lambda: notify(seal(LAUGHS)), "DTDs are not allowed"),
    ("inner root not <root>", lambda: notify(seal(root_xml(ROOT, "xml"))), "root element must be <root>"),
    ("inner not XML", lambda: notify(seal(b"\xff\xfe garbage")), "not a refund"),
    ("inner field twice", lambda: notify(seal(b"<root><refund_id>1</refund_id><refund_id>2</refund_id></root>")),
     "more than once"),
    ("inner nested field", lambda: notify(seal(b"<root><refund_id><a>1</a></refund_id></root>")), "plain text"),
    ("no out_refund_no", lambda: notify(seal(root_xml(_without("out_refund_no")))), "out_refund_no missing"),
    ("no out_trade_no", lambda: notify(seal(root_xml(_without("out_trade_no")))), "out_trade_no missing"),
    ("no refund_id", lambda: notify(seal(root_xml(_without("refund_id")))), "refund_id missing"),
    ("no refund_fee", lambda: notify(seal(root_xml(_without("refund_fee")))), "refund_fee"),
    ("refund_fee in yuan", lambda: notify(seal(root_xml({**ROOT, "refund_fee": "3.00"}))), "refund_fee"),
    ("refund_fee negative", lambda: notify(seal(root_xml({**ROOT, "refund_fee": "-300"}))), "refund_fee"),
    ("refund_fee superscript", lambda: notify(seal(root_xml({**ROOT, "refund_fee": "³"}))), "refund_fee"),
    ("refund_fee huge", lambda: notify(seal(root_xml({**ROOT, "refund_fee": "9" * 40}))), "refund_fee"),
    ("total_fee not fen", lambda: notify(seal(root_xml({**ROOT, "total_fee": "lots"}))), "total_fee"),
    ("status PROCESSING", lambda: notify(seal(root_xml({**ROOT, "refund_status": "PROCESSING"}))), "not an outcome"),
    ("status unknown", lambda: notify(seal(root_xml({**ROOT, "refund_status": "MAYBE"}))), "not an outcome"),
    ("SUCCESS without time", lambda: notify(seal(root_xml(_without("success_time")))), "success_time"),
    ("SUCCESS with a bad time", lambda: notify(seal(root_xml({**ROOT, "success_time": "yesterday"}))),
     "success_time"),
]


@pytest.mark.parametrize("body, reason", [(case, reason) for _, case, reason in HOSTILE],
                         ids=[name for name, _, _ in HOSTILE])
def test_a_notify_that_must_not_be_believed_is_refused_with_the_reason(body: Case, reason: str) -> None:
    with pytest.raises(NotifyRejected, match=reason):
        gateway().read_refund_notify(body(), {})


def test_a_payment_notify_is_not_a_refund() -> None:
    """A signed payment notify sent to the refund URL has no req_info: refused, not misread."""
    paid = signing.signed({"return_code": "SUCCESS", "result_code": "SUCCESS", "appid": APPID, "mch_id": MCH_ID,
                           "out_trade_no": "ORD1", "transaction_id": "4200000001", "total_fee": "880",
                           "nonce_str": "n"}, KEY)
    body = ("<xml>" + "".join(f"<{k}>{v}</{k}>" for k, v in paid.items()) + "</xml>").encode()
    with pytest.raises(NotifyRejected, match="req_info missing"):
        gateway().read_refund_notify(body, {})
