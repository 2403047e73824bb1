"""v3 refunds on the gateway: ``REFUND.*`` notifies (verified over the raw
body, decrypted with the APIv3 key, checked for merchant, shape and state) read
by ``read_notify`` and ``read_refund_notify``; refund answers and error codes
mapped to the seam.

The notifies are built as WeChat's docs describe them with
tests/support/wxpay_v3_platform (its own keys, its own AES-GCM and
wechatpayv3's signing), and wechatpayv3's notify parser (``Core.callback``)
reads each accepted one to the same resource first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from wechatpayv3.core import Core  # type: ignore[import-untyped]

from server.gateway.abc import REFUND_ABNORMAL, REFUND_CLOSED, REFUND_PROCESSING, REFUND_SUCCESS, RefundState
from server.gateway.errors import GatewayError, GatewayUnavailable, NotifyRejected, RefundNotFound, RefundRefused
from server.gateway.wxpay_v3 import refunds
from server.gateway.wxpay_v3.client import REFUND_KINDS, REFUND_QUERY_KINDS, WxPayV3Client, v3_error
from server.gateway.wxpay_v3.gateway import WxPayV3Gateway
from server.gateway.wxpay_v3.verifier import Verifier
from tests.support import wxpay_v3_platform as wp

# The refund notify resource of WeChat's docs (fields and their shapes).
REFUNDED = {
    "mchid": wp.MCHID, "out_trade_no": "V3N1", "transaction_id": "4200000001202401011234567890",
    "out_refund_no": "V3R1", "refund_id": "50000000382024010112345678901", "refund_status": "SUCCESS",
    "success_time": "2024-01-01T12:30:05+08:00", "user_received_account": "招商银行信用卡0403",
    "amount": {"total": 880, "refund": 300, "payer_total": 880, "payer_refund": 300},
}
SUCCESS_AT = 1704083405.0  # 2024-01-01T04:30:05Z


def build(resource: dict[str, Any], *, event: str = "REFUND.SUCCESS", key: str = wp.APIV3_KEY,
          original_type: str | None = "refund", timestamp: int | None = None,
          signer: Any = None) -> tuple[bytes, dict[str, str]]:
    sealed = wp.encrypt(key, json.dumps(resource, ensure_ascii=False).encode(), "refund")
    if original_type is not None:
        sealed["original_type"] = original_type
    body = json.dumps({"id": "EV-2024-0001", "create_time": "2024-01-01T12:30:06+08:00",
                       "resource_type": "encrypt-resource", "event_type": event, "summary": "退款成功",
                       "resource": sealed}, ensure_ascii=False)
    return body.encode(), wp.signed_headers(signer or wp.keys().platform_key, wp.PUB_KEY_ID, body, timestamp)


def peer_reads(body: bytes, headers: dict[str, str]) -> dict[str, Any] | None:
    keys = wp.keys()
    private_pem = keys.merchant_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()).decode()
    public_pem = keys.platform_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    core = Core(wp.MCHID, keys.merchant_serial, private_pem, wp.APIV3_KEY, public_key=public_pem,
                public_key_id=wp.PUB_KEY_ID)
    return core.callback(headers, body)  # type: ignore[no-any-return]


@pytest.fixture
def gateway(io_loop) -> Iterator[WxPayV3Gateway]:  # type: ignore[no-untyped-def]
    session = io_loop.run_sync(_session)  # notifies never call out
    keys = wp.keys()
    verifier = Verifier(public_key_id=wp.PUB_KEY_ID, public_key=keys.platform_key.public_key())
    yield WxPayV3Gateway(WxPayV3Client(session, "http://127.0.0.1:9", wp.MCHID, wp.APPID, keys.merchant_serial,
                                       keys.merchant_key, wp.APIV3_KEY, verifier))
    io_loop.run_sync(session.close)


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


@pytest.mark.parametrize("event, status, ours", [
    ("REFUND.SUCCESS", "SUCCESS", REFUND_SUCCESS),
    ("REFUND.ABNORMAL", "ABNORMAL", REFUND_ABNORMAL),
    ("REFUND.CLOSED", "CLOSED", REFUND_CLOSED),
])
def test_a_refund_notify_wechatpayv3_accepts_is_a_refund_notice(gateway: WxPayV3Gateway, event: str, status: str,
                                                                ours: str) -> None:
    resource = {**REFUNDED, "refund_status": status}
    if status != "SUCCESS":
        del resource["success_time"]
    body, headers = build(resource, event=event)
    peer = peer_reads(body, headers)
    assert peer is not None and peer["resource"] == resource and peer["event_type"] == event
    expected = RefundState("V3R1", "V3N1", "50000000382024010112345678901", 300, ours,
                           SUCCESS_AT if ours == REFUND_SUCCESS else None)
    notice = gateway.read_notify(body, headers)
    assert (notice.out_trade_no, notice.payment, notice.failure, notice.refund) == ("V3N1", None, "", expected)
    assert gateway.read_refund_notify(body, headers) == expected


def test_a_payment_notify_is_not_a_refund_notify(gateway: WxPayV3Gateway) -> None:
    trade = {"appid": wp.APPID, "mchid": wp.MCHID, "out_trade_no": "V3N1", "transaction_id": "4200000001",
             "trade_state": "SUCCESS", "success_time": "2024-01-01T12:00:05+08:00", "amount": {"total": 880}}
    sealed = {**wp.encrypt(wp.APIV3_KEY, json.dumps(trade).encode(), "transaction"), "original_type": "transaction"}
    body = json.dumps({"id": "EV-1", "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS",
                       "resource": sealed})
    headers = wp.signed_headers(wp.keys().platform_key, wp.PUB_KEY_ID, body)
    assert gateway.read_notify(body.encode(), headers).payment is not None  # still a payment on the shared URL
    with pytest.raises(NotifyRejected, match="not a refund result"):
        gateway.read_refund_notify(body.encode(), headers)


def _without(name: str) -> dict[str, Any]:
    return {k: v for k, v in REFUNDED.items() if k != name}


HOSTILE: list[tuple[str, Any, str]] = [
    ("stale", lambda: build(REFUNDED, timestamp=int(time.time()) - 301), "Wechatpay-Timestamp"),
    ("forged", lambda: build(REFUNDED, signer=wp.keys().cert_keys[0]), "does not verify"),
    ("other APIv3 key", lambda: build(REFUNDED, key="Y" * 32), "does not decrypt"),
    ("other merchant", lambda: build({**REFUNDED, "mchid": "1900000001"}), "mchid is not ours"),
    ("no original_type", lambda: build(REFUNDED, original_type=None), "not a refund"),
    ("a transaction resource", lambda: build(REFUNDED, original_type="transaction"), "not a refund"),
    ("event and state disagree", lambda: build(REFUNDED, event="REFUND.CLOSED"), "carries refund_status"),
    ("unknown refund event", lambda: build(REFUNDED, event="REFUND.PROCESSING"), "carries refund_status"),
    ("unknown state", lambda: build({**REFUNDED, "refund_status": "MAYBE"}), "not a refund state"),
    ("no out_refund_no", lambda: build(_without("out_refund_no")), "out_refund_no"),
    ("no refund_id", lambda: build(_without("refund_id")), "refund_id"),
    ("out_trade_no too long", lambda: build({**REFUNDED, "out_trade_no": "X" * 33}), "out_trade_no"),
    ("amount as text", lambda: build({**REFUNDED, "amount": {"refund": "300"}}), "amount.refund"),
    ("amount as bool", lambda: build({**REFUNDED, "amount": {"refund": True}}), "amount.refund"),
    ("amount negative", lambda: build({**REFUNDED, "amount": {"refund": -300}}), "amount.refund"),
    ("no amount", lambda: build(_without("amount")), "amount.refund"),
    ("SUCCESS without time", lambda: build(_without("success_time")), "success_time"),
    ("SUCCESS with a bad time", lambda: build({**REFUNDED, "success_time": "yesterday"}), "success_time"),
]


@pytest.mark.parametrize("make, reason", [(m, r) for _, m, r in HOSTILE], ids=[n for n, _, _ in HOSTILE])
def test_a_refund_notify_that_must_not_be_believed_is_refused_with_the_reason(gateway: WxPayV3Gateway, make: Any,
                                                                              reason: str) -> None:
    body, headers = make()
    for read in (gateway.read_notify, gateway.read_refund_notify):
        with pytest.raises(NotifyRejected, match=reason):
            read(body, headers)


def test_a_resource_that_is_not_json_is_refused(gateway: WxPayV3Gateway) -> None:
    sealed = {**wp.encrypt(wp.APIV3_KEY, b"<xml>refund</xml>", "refund"), "original_type": "refund"}
    body = json.dumps({"id": "EV-1", "resource_type": "encrypt-resource", "event_type": "REFUND.SUCCESS",
                       "resource": sealed})
    with pytest.raises(NotifyRejected, match="not JSON"):
        gateway.read_refund_notify(body.encode(), wp.signed_headers(wp.keys().platform_key, wp.PUB_KEY_ID, body))


# -- answers and errors of the refund calls -----------------------------------------------

# The answer shape of WeChat's docs for POST /v3/refund/domestic/refunds (and the query).
ANSWER = {
    "refund_id": "50000000382019052709732678859", "out_refund_no": "1217752501201407033233368018",
    "transaction_id": "1217752501201407033233368018", "out_trade_no": "1217752501201407033233368018",
    "channel": "ORIGINAL", "user_received_account": "招商银行信用卡0403",
    "success_time": "2020-12-01T16:18:12+08:00", "create_time": "2020-12-01T16:18:12+08:00", "status": "SUCCESS",
    "amount": {"total": 100, "refund": 100, "payer_total": 90, "payer_refund": 90, "settlement_refund": 100,
               "settlement_total": 100, "discount_refund": 10, "currency": "CNY"},
}


@pytest.mark.parametrize("status, ours", [("SUCCESS", REFUND_SUCCESS), ("PROCESSING", REFUND_PROCESSING),
                                          ("CLOSED", REFUND_CLOSED), ("ABNORMAL", REFUND_ABNORMAL)])
def test_an_answer_maps_to_our_refund_state(status: str, ours: str) -> None:
    answer = {**ANSWER, "status": status}
    if status != "SUCCESS":
        del answer["success_time"]
    state = refunds.from_answer(answer, "1217752501201407033233368018")
    assert (state.status, state.amount, state.refund_id) == (ours, 100, "50000000382019052709732678859")
    assert state.success_time == (1606810692.0 if ours == REFUND_SUCCESS else None)


@pytest.mark.parametrize("answer, reason", [
    ({**ANSWER, "out_refund_no": "someone-else"}, "answered for"),
    ({**ANSWER, "status": "REFUNDCLOSE"}, "not a refund state"),
    ({**ANSWER, "amount": {"refund": "100"}}, "amount.refund"),
    ({k: v for k, v in ANSWER.items() if k != "refund_id"}, "refund_id"),
])
def test_an_answer_that_cannot_be_trusted_is_retryable(answer: dict[str, Any], reason: str) -> None:
    with pytest.raises(GatewayUnavailable, match=reason):
        refunds.from_answer(answer, "1217752501201407033233368018")


@pytest.mark.parametrize("status, code, kind", [
    (403, "NOT_ENOUGH", RefundRefused), (400, "PARAM_ERROR", RefundRefused), (400, "INVALID_REQUEST", RefundRefused),
    (404, "RESOURCE_NOT_EXISTS", RefundRefused), (403, "USER_ACCOUNT_ABNORMAL", RefundRefused),
    (500, "SYSTEM_ERROR", GatewayUnavailable), (429, "FREQUENCY_LIMITED", GatewayUnavailable),
    (502, "HTTP_502", GatewayUnavailable),
])
def test_refund_error_codes_map_per_the_spec(status: int, code: str, kind: type[GatewayError]) -> None:
    error = v3_error(status, code, "x", REFUND_KINDS)
    assert type(error) is kind and error.code == code
    assert error.retryable == (kind is GatewayUnavailable)


def test_an_unknown_refund_refusal_is_neither_refused_nor_retried() -> None:
    error = v3_error(403, "NO_AUTH", "x", REFUND_KINDS)
    assert type(error) is GatewayError and not error.retryable


def test_a_refund_query_of_no_such_refund_is_not_found_and_trade_queries_keep_their_meaning() -> None:
    assert type(v3_error(404, "RESOURCE_NOT_EXISTS", "x", REFUND_QUERY_KINDS)) is RefundNotFound
    assert not isinstance(v3_error(404, "RESOURCE_NOT_EXISTS", "x"), (RefundNotFound, RefundRefused))
