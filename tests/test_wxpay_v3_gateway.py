"""``WxPayV3Gateway.read_notify``: a v3 payment notify verified over its raw
body, decrypted with the APIv3 key and checked for merchant, app, amount and
state.

Two things vouch that the notifies here are WeChat's shape, not ours:
wechatpay-go's own signed notify (golden vector) gets through our signature
check over the raw bytes, and the notifies built below are the shape
wechatpayv3's notify parser (``Core.callback``) accepts (checked on the paid
one, which ours then reads).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from wechatpayv3.core import Core  # type: ignore[import-untyped]

from server.gateway.errors import NotifyRejected
from server.gateway.wxpay_v3 import crypto
from server.gateway.wxpay_v3.client import WxPayV3Client
from server.gateway.wxpay_v3.gateway import WxPayV3Gateway
from server.gateway.wxpay_v3.verifier import Verifier
from tests.support import wxpay_v3_platform as wp
from tests.support import wxpay_v3_vectors as v
from tests.support.waiting import eventually

PAID = {
    "appid": wp.APPID, "mchid": wp.MCHID, "out_trade_no": "V3N1", "transaction_id": "4200000001202401011234567890",
    "trade_type": "NATIVE", "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
    "attach": "", "success_time": "2024-01-01T12:00:05+08:00", "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    "amount": {"total": 880, "payer_total": 880, "currency": "CNY", "payer_currency": "CNY"},
}


def build_notify(trade: dict[str, Any], *, event: str = "TRANSACTION.SUCCESS", key: str = wp.APIV3_KEY,
                 timestamp: int | None = None, serial: str = wp.PUB_KEY_ID,
                 signer: Any = None) -> tuple[bytes, dict[str, str]]:
    """A notify as WeChat's docs describe it (and as wechatpayv3 parses it)."""
    resource = {**wp.encrypt(key, json.dumps(trade, ensure_ascii=False).encode(), "transaction"),
                "original_type": "transaction"}
    body = json.dumps({"id": "EV-018e7b1c", "create_time": "2024-01-01T12:00:06+08:00",
                       "resource_type": "encrypt-resource", "event_type": event, "summary": "支付成功",
                       "resource": resource}, ensure_ascii=False)
    headers = wp.signed_headers(signer or wp.keys().platform_key, serial, body, timestamp)
    return body.encode(), headers


def peer_reads(body: bytes, headers: dict[str, str]) -> dict[str, Any] | None:
    """wechatpayv3's own notify parsing (public-key mode, no network)."""
    keys = wp.keys()
    private_pem = keys.merchant_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()).decode()
    public_pem = keys.platform_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    core = Core(wp.MCHID, keys.merchant_serial, private_pem, wp.APIV3_KEY, public_key=public_pem,
                public_key_id=wp.PUB_KEY_ID)
    return core.callback(headers, body)  # type: ignore[no-any-return]


@pytest.fixture
def make(io_loop) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    session = io_loop.run_sync(_session)  # read_notify never calls out: one session serves every gateway

    def build(verifier: Verifier | None = None, apiv3_key: bytes | str = wp.APIV3_KEY) -> WxPayV3Gateway:
        keys = wp.keys()
        verifier = verifier or Verifier(public_key_id=wp.PUB_KEY_ID, public_key=keys.platform_key.public_key())
        return WxPayV3Gateway(WxPayV3Client(session, "http://127.0.0.1:9", wp.MCHID, wp.APPID, keys.merchant_serial,
                                            keys.merchant_key, apiv3_key, verifier))

    yield build
    io_loop.run_sync(session.close)


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


def test_a_paid_notify_wechatpayv3_accepts_is_a_payment(make) -> None:  # type: ignore[no-untyped-def]
    body, headers = build_notify(PAID)
    peer = peer_reads(body, headers)
    assert peer is not None and peer["resource"] == PAID
    notice = make().read_notify(body, headers)
    assert notice.out_trade_no == "V3N1" and notice.payment is not None
    assert (notice.payment.transaction_id, notice.payment.total_fee) == ("4200000001202401011234567890", 880)
    assert notice.payment.paid_at == 1704081605.0  # 2024-01-01T04:00:05Z


def test_lower_case_header_names_are_read(make) -> None:  # type: ignore[no-untyped-def]
    body, headers = build_notify(PAID)
    assert make().read_notify(body, {k.lower(): val for k, val in headers.items()}).payment is not None


def test_the_go_sdks_real_notify_passes_our_signature_check_over_its_raw_body(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """wechatpay-go's notify is a PAYSCORE event: it must clear the signature
    (the raw bytes WeChat signed) and only then be turned away as no payment."""
    verifier = Verifier(certificates_dir=tmp_path, clock=lambda: v.GO_NOTIFY_NOW)
    verifier.add_certificates([crypto.load_certificate(v.GO_NOTIFY_CERTIFICATE)])
    gateway = make(verifier)
    with pytest.raises(NotifyRejected, match=r"'PAYSCORE\.USER_OPEN_SERVICE' is not a payment result"):
        gateway.read_notify(v.GO_NOTIFY_BODY, v.GO_NOTIFY_HEADERS)
    reserialised = json.dumps(json.loads(v.GO_NOTIFY_BODY)).encode()  # same JSON, not the signed bytes
    with pytest.raises(NotifyRejected, match="does not verify"):
        gateway.read_notify(reserialised, v.GO_NOTIFY_HEADERS)


def _forger() -> Any:
    return wp.keys().cert_keys[0]


@pytest.mark.parametrize("notify, reason", [
    (lambda: build_notify(PAID, timestamp=int(time.time()) - 301), "Wechatpay-Timestamp"),
    (lambda: build_notify(PAID, timestamp=int(time.time()) + 301), "Wechatpay-Timestamp"),
    (lambda: build_notify(PAID, signer=_forger()), "does not verify"),
    (lambda: build_notify(PAID, key="Y" * 32), "does not decrypt"),
    (lambda: build_notify({**PAID, "mchid": "1900000001"}), "mchid is not ours"),
    (lambda: build_notify({**PAID, "appid": "wx0000000000000000"}), "appid is not ours"),
    (lambda: build_notify({**PAID, "amount": {"total": "880"}}), "amount.total"),
    (lambda: build_notify({**PAID, "amount": {"total": True}}), "amount.total"),
    (lambda: build_notify({**PAID, "transaction_id": ""}), "transaction_id"),
    (lambda: build_notify({**PAID, "out_trade_no": "X" * 33}), "unknown order"),
    # A refund event must carry a refund resource (tests/test_wxpay_v3_refunds.py reads real ones).
    (lambda: build_notify(PAID, event="REFUND.SUCCESS"), "resource is a 'transaction', not a refund"),
])
def test_a_notify_that_must_not_be_believed_is_refused_with_the_reason(make, notify, reason) -> None:  # type: ignore[no-untyped-def]
    body, headers = notify()
    with pytest.raises(NotifyRejected, match=reason):
        make().read_notify(body, headers)


def test_a_tampered_ciphertext_is_refused(make) -> None:  # type: ignore[no-untyped-def]
    """Signed over the tampered body (a forger with the platform key but not
    the APIv3 key): the GCM tag still refuses it."""
    body, _ = build_notify(PAID)
    notify = json.loads(body)
    ct = bytearray(notify["resource"]["ciphertext"].encode())
    ct[10] = ord("A") if ct[10] != ord("A") else ord("B")
    notify["resource"]["ciphertext"] = ct.decode()
    tampered = json.dumps(notify, ensure_ascii=False)
    headers = wp.signed_headers(wp.keys().platform_key, wp.PUB_KEY_ID, tampered)
    with pytest.raises(NotifyRejected, match="does not decrypt"):
        make().read_notify(tampered.encode(), headers)


def test_the_signtest_probe_is_refused(make) -> None:  # type: ignore[no-untyped-def]
    body, headers = build_notify(PAID)
    headers["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]
    with pytest.raises(NotifyRejected, match="SIGNTEST"):
        make().read_notify(body, headers)


def test_an_unpaid_state_is_a_notice_without_payment(make) -> None:  # type: ignore[no-untyped-def]
    body, headers = build_notify({**PAID, "trade_state": "PAYERROR", "trade_state_desc": "银行卡余额不足"},
                                 event="TRANSACTION.FAIL")
    notice = make().read_notify(body, headers)
    assert notice.payment is None and notice.out_trade_no == "V3N1" and "PAYERROR" in notice.failure


def test_a_replayed_notify_reads_the_same(make) -> None:  # type: ignore[no-untyped-def]
    """No nonce memory: a replay inside the window is the same payment again,
    which the single conditional update records once."""
    body, headers = build_notify(PAID)
    gateway = make()
    assert gateway.read_notify(body, headers) == gateway.read_notify(body, headers)


@pytest.mark.gen_test(timeout=30)
async def test_a_notify_under_a_new_certificate_is_refused_then_accepted_when_resent(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """read_notify cannot wait for a fetch: it refuses, fetches in the
    background (rate limited), and WeChat's resend is accepted."""
    keys = wp.keys()
    verifier = Verifier(certificates_dir=tmp_path / "certs")
    gateway = make(verifier)
    fetched: list[int] = []

    async def platform() -> list[Any]:
        fetched.append(1)
        return [keys.certs[1]]

    verifier.fetch_with(platform)
    serial = crypto.certificate_serial(keys.certs[1])
    body, headers = build_notify(PAID, serial=serial, signer=keys.cert_keys[1])
    with pytest.raises(NotifyRejected, match="no platform key"):
        gateway.read_notify(body, headers)
    await eventually(lambda: serial in verifier.serials(), message="certificate fetched in the background")
    assert gateway.read_notify(body, headers).payment is not None
    assert fetched == [1]


def test_during_the_migration_notifies_under_either_are_accepted(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys = wp.keys()
    verifier = Verifier(public_key_id=wp.PUB_KEY_ID, public_key=keys.platform_key.public_key(),
                        certificates_dir=tmp_path / "certs")
    verifier.add_certificates([keys.certs[0]])
    gateway = make(verifier)
    by_cert = build_notify(PAID, serial=crypto.certificate_serial(keys.certs[0]), signer=keys.cert_keys[0])
    by_key = build_notify(PAID)
    assert gateway.read_notify(*by_cert).payment == gateway.read_notify(*by_key).payment is not None
