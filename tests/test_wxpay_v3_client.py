"""The v3 client and gateway over real HTTP against a protocol stand-in
(tests/support/wxpay_v3_platform.py): request fields and signatures, error
JSON mapped to the seam's typed errors, answers refused when their signature
or timestamp is wrong, platform certificates fetched, rotated and rate
limited. The stand-in vouches for the protocol only; the crypto is vouched
for by tests/test_wxpay_v3_crypto.py (golden vectors, wechatpayv3).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tornado.httpserver
import tornado.netutil
from cryptography.hazmat.primitives.asymmetric import rsa

from server.gateway.abc import NativeOrder
from server.gateway.errors import (
    CloseTooEarly,
    GatewayError,
    GatewayUnavailable,
    TradeAlreadyPaid,
    TradeClosed,
    TradeNotFound,
)
from server.gateway.wxpay_v3 import crypto
from server.gateway.wxpay_v3.client import WxPayV3Client
from server.gateway.wxpay_v3.gateway import WxPayV3Gateway
from server.gateway.wxpay_v3.verifier import Verifier
from tests.support import wxpay_v3_platform as wp


def order(no: str, fee: int = 100) -> NativeOrder:
    return NativeOrder(out_trade_no=no, description="测试商品 test", total_fee=fee,
                       notify_url="https://shop.example/wxpay/v3/notify", product_id="p1",
                       expires_at=dt.datetime(2024, 1, 1, 4, 30, tzinfo=dt.UTC), client_ip="203.0.113.7")


@pytest.fixture
def platform(io_loop) -> Iterator[tuple[wp.Platform, str]]:  # type: ignore[no-untyped-def]
    state = wp.Platform(wp.keys())
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(wp.application(state))
    server.add_sockets(sockets)
    yield state, f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    server.stop()


@pytest.fixture
def make(io_loop, platform, tmp_path: Path) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    sessions: list[aiohttp.ClientSession] = []
    state, base = platform

    def build(mode: str = "public_key", apiv3_key: str = wp.APIV3_KEY, api_base: str | None = None,
              certs_dir: Path | None = None, clock: Callable[[], float] = time.time,
              merchant_key: rsa.RSAPrivateKey | None = None) -> WxPayV3Gateway:
        keys = state.keys
        if mode == "public_key":
            verifier = Verifier(public_key_id=wp.PUB_KEY_ID, public_key=keys.platform_key.public_key(), clock=clock)
        else:
            verifier = Verifier(certificates_dir=certs_dir or tmp_path / "platform-certs", clock=clock)
        session = aiohttp.ClientSession()
        sessions.append(session)
        client = WxPayV3Client(session, api_base or base, wp.MCHID, wp.APPID, keys.merchant_serial,
                               merchant_key or keys.merchant_key, apiv3_key, verifier, timeout=3)
        return WxPayV3Gateway(client)

    yield build
    for s in sessions:
        io_loop.run_sync(s.close)


@pytest.mark.gen_test(timeout=30)
async def test_native_order_is_signed_and_carries_every_field(platform, make) -> None:  # type: ignore[no-untyped-def]
    state, _ = platform
    checkout = await make().create_native(order("V3A1", 1234))
    assert checkout.code_url == "weixin://wxpay/bizpayurl/up?pr=V3A1"
    sent = state.requests[-1]
    assert sent["method"] == "POST" and sent["uri"] == "/v3/pay/transactions/native"
    assert json.loads(sent["body"]) == {
        "appid": wp.APPID, "mchid": wp.MCHID, "description": "测试商品 test", "out_trade_no": "V3A1",
        "time_expire": "2024-01-01T12:30:00+08:00", "notify_url": "https://shop.example/wxpay/v3/notify",
        "amount": {"total": 1234, "currency": "CNY"}, "scene_info": {"payer_client_ip": "203.0.113.7"}}
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["Wechatpay-Serial"] == wp.PUB_KEY_ID  # public-key merchants must name the key


@pytest.mark.gen_test(timeout=30)
async def test_query_reads_a_paid_trade_and_close_answers_204(platform, make) -> None:  # type: ignore[no-untyped-def]
    state, _ = platform
    gateway = make()
    await gateway.create_native(order("V3B1", 880))
    assert (await gateway.query("V3B1")).state == "NOTPAY"
    assert state.requests[-1]["uri"] == f"/v3/pay/transactions/out-trade-no/V3B1?mchid={wp.MCHID}"
    wp.pay(state, "V3B1")
    trade = await gateway.query("V3B1")
    assert trade.state == "SUCCESS" and trade.payment is not None
    assert (trade.payment.transaction_id, trade.payment.total_fee) == ("4200000000202401010000000001", 880)
    assert trade.payment.paid_at == dt.datetime(2024, 1, 1, 4, 0, 5, tzinfo=dt.UTC).timestamp()
    await gateway.create_native(order("V3B2"))
    await gateway.close("V3B2")
    assert state.trades["V3B2"]["trade_state"] == "CLOSED"
    assert json.loads(state.requests[-1]["body"]) == {"mchid": wp.MCHID}


@pytest.mark.gen_test(timeout=30)
async def test_wechats_errors_become_the_seams_typed_errors(platform, make) -> None:  # type: ignore[no-untyped-def]
    state, _ = platform
    gateway = make()
    with pytest.raises(TradeNotFound):
        await gateway.query("NEVER")
    await gateway.create_native(order("V3C1"))
    wp.pay(state, "V3C1")
    with pytest.raises(TradeAlreadyPaid):
        await gateway.close("V3C1")
    with pytest.raises(TradeAlreadyPaid):
        await gateway.create_native(order("V3C1"))
    cases: list[tuple[tuple[int, str, str], type[GatewayError], bool]] = [
        ((400, "ORDER_CLOSED", "订单已关闭"), TradeClosed, False),
        ((400, "CLOSE_TOO_EARLY", "too young"), CloseTooEarly, False),
        ((404, "RESOURCE_NOT_EXISTS", "无此资源"), TradeNotFound, False),
        ((500, "SYSTEM_ERROR", "系统繁忙"), GatewayUnavailable, True),
        ((429, "RATELIMIT_EXCEEDED", "slow down"), GatewayUnavailable, True),
        ((403, "FREQUENCY_LIMITED", "频率超限"), GatewayUnavailable, True),
        ((502, "BAD_GATEWAY", ""), GatewayUnavailable, True),
        ((400, "PARAM_ERROR", "参数错误"), GatewayError, False),
    ]
    for answer, kind, retryable in cases:
        state.next_error = answer
        with pytest.raises(kind) as err:
            await gateway.close("V3C1")
        assert err.value.code == answer[1] and err.value.retryable is retryable, answer
        if kind is GatewayError:
            assert type(err.value) is GatewayError


@pytest.mark.gen_test(timeout=30)
async def test_a_signature_wechat_would_refuse_is_a_401_not_a_trade(platform, make) -> None:  # type: ignore[no-untyped-def]
    """The stand-in checks our Authorization by hand: a merchant key it does not know is refused."""
    state, _ = platform
    gateway = make(merchant_key=wp.rsa_key())  # the configured serial, another key
    with pytest.raises(GatewayError) as err:
        await gateway.create_native(order("V3D1"))
    assert err.value.code == "SIGN_ERROR" and "V3D1" not in state.trades


def _tamper(body: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body.replace("NOTPAY", "SUCCESS"), headers


def _stale(body: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    keys = wp.keys()
    return body, wp.signed_headers(keys.platform_key, wp.PUB_KEY_ID, body, timestamp=int(time.time()) - 301)


def _unsigned(body: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body, {}


def _forged(body: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body, wp.signed_headers(wp.keys().cert_keys[0], wp.PUB_KEY_ID, body)  # the right name, another key


@pytest.mark.parametrize("answer_with, reason", [(_tamper, "does not verify"), (_stale, "Wechatpay-Timestamp"),
                                                 (_unsigned, "unsigned"), (_forged, "does not verify")])
@pytest.mark.gen_test(timeout=30)
async def test_an_answer_that_does_not_verify_is_not_believed(platform, make, answer_with, reason) -> None:  # type: ignore[no-untyped-def]
    state, _ = platform
    gateway = make()
    await gateway.create_native(order("V3E1"))
    state.answer_with = answer_with
    with pytest.raises(GatewayUnavailable) as err:
        await gateway.query("V3E1")
    assert err.value.code == "BAD_RESPONSE" and reason in str(err.value)
    state.answer_with = None  # control: the same query, honestly signed, is believed
    assert (await gateway.query("V3E1")).state == "NOTPAY"


@pytest.mark.gen_test(timeout=30)
async def test_a_signed_error_must_verify_too(platform, make) -> None:  # type: ignore[no-untyped-def]
    state, _ = platform
    gateway = make()
    state.answer_with = _forged
    with pytest.raises(GatewayUnavailable) as err:
        await gateway.query("NEVER")  # a forged "ORDER_NOT_EXIST" must not read as TradeNotFound
    assert err.value.code == "BAD_RESPONSE"


@pytest.mark.gen_test(timeout=30)
async def test_an_unreachable_api_is_retryable(make) -> None:  # type: ignore[no-untyped-def]
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    sockets[0].close()  # nothing listens there now
    with pytest.raises(GatewayUnavailable) as err:
        await make(api_base=f"http://127.0.0.1:{port}").query("V3F1")
    assert err.value.code == "UNREACHABLE"


# -- platform-certificate mode --------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_certificates_are_fetched_on_first_sight_and_on_rotation(platform, make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state, _ = platform
    state.mode = "certificate"
    certs_dir = tmp_path / "certs"
    later = [0.0]  # the rotation comes after the minute in which one fetch is all an unknown serial gets
    gateway = make("certificate", certs_dir=certs_dir, clock=lambda: time.time() + later[0])
    await gateway.create_native(order("V3G1"))  # signed by certificate 0, unknown yet: one fetch
    assert state.certificate_fetches == 1
    fetch = next(r for r in state.requests if r["uri"] == "/v3/certificates")
    assert fetch["method"] == "GET" and fetch["headers"]["Authorization"].startswith(crypto.SCHEMA)
    old, new = (wp.serial_of(c) for c in state.keys.certs)
    old, new = (crypto.certificate_serial(c) for c in state.keys.certs)
    assert (certs_dir / f"{old}.pem").is_file()
    assert (await gateway.query("V3G1")).state == "NOTPAY"
    # Certificate 0's serial has 39 hex digits: the stand-in writes it without the leading zero our
    # byte-wise form has; both name the same certificate.
    assert wp.serial_of(state.keys.certs[0]) != old
    assert crypto.serial_key(state.requests[-1]["headers"]["Wechatpay-Serial"]) == crypto.serial_key(old)

    state.listed_certs, state.signing_cert = [0, 1], 1  # WeChat rotates: both listed, answers under the new one
    later[0] = 61
    assert (await gateway.query("V3G1")).state == "NOTPAY"
    assert state.certificate_fetches == 2
    assert sorted(p.stem for p in certs_dir.glob("*.pem")) == sorted([old, new])
    state.signing_cert = 0  # the old one is still good while listed and unexpired
    assert (await gateway.query("V3G1")).state == "NOTPAY"
    assert state.certificate_fetches == 2

    restarted = make("certificate", certs_dir=certs_dir)  # the cache serves a restart without a fetch
    assert (await restarted.query("V3G1")).state == "NOTPAY"
    assert state.certificate_fetches == 2


@pytest.mark.gen_test(timeout=30)
async def test_an_unknown_serial_fetches_once_a_minute_at_most(platform, make) -> None:  # type: ignore[no-untyped-def]
    state, _ = platform
    state.mode = "certificate"
    gateway = make("certificate")
    await gateway.create_native(order("V3H1"))
    assert state.certificate_fetches == 1
    state.signing_cert = 1  # signed under a certificate the platform does not list: refused
    for _ in range(3):
        with pytest.raises(GatewayUnavailable) as err:
            await gateway.query("V3H1")
        assert "no platform key" in str(err.value)
    assert state.certificate_fetches == 1  # the first fetch was under a minute ago


@pytest.mark.gen_test(timeout=30)
async def test_certificates_that_do_not_decrypt_are_not_taken(platform, make) -> None:  # type: ignore[no-untyped-def]
    state, _ = platform
    state.mode = "certificate"
    state.apiv3_key = "X" * 32  # not the merchant's APIv3 key
    with pytest.raises(GatewayUnavailable) as err:
        await make("certificate").create_native(order("V3I1"))
    assert "no platform key" in str(err.value)
    assert state.certificate_fetches == 1


@pytest.mark.gen_test(timeout=30)
async def test_a_wrong_length_apiv3_key_is_refused_at_once(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(crypto.CredentialError, match="32 bytes"):
        make(apiv3_key="short")
