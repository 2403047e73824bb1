"""v2 refunds on the gateway: refund and refundquery answers as RefundState,
err_codes mapped to the seam's kinds per call, and the mutual TLS the refund
call needs, over a real TLS handshake.

The TLS endpoint here is no WeChat: it requires a client certificate from its
CA, records the one presented and answers every request 503. That is enough
to see which certificate the client presents and which CAs it trusts; the
refund protocol itself is the simulator's to play (end-to-end tests).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import settings as settings_mod
from server.composition.gateways import build_gateway
from server.gateway.abc import REFUND_ABNORMAL, REFUND_CLOSED, REFUND_PROCESSING, REFUND_SUCCESS, RefundRequest
from server.gateway.errors import (
    GatewayUnavailable,
    RefundNotFound,
    RefundRefused,
    TradeNotFound,
    WxPayBadResponse,
    WxPayError,
    WxPayUnreachable,
    v2_error,
)
from server.gateway.wxpay_v2 import refunds
from server.gateway.wxpay_v2.client import Merchant, WxPayClient
from server.gateway.wxpay_v2.gateway import WxPayV2Gateway
from server.gateway.wxpay_v2.tls import TLSSetupError, client_tls

REQUEST = RefundRequest(out_trade_no="ORD1", out_refund_no="R1", total_fee=880, refund_fee=300, reason="broken",
                        notify_url="https://shop.example/wxpay/refund_notify")

# -- answers ------------------------------------------------------------------------

# The shape of WeChat's documented secapi/pay/refund answer (signature already checked by the client).
ACCEPTED = {"return_code": "SUCCESS", "result_code": "SUCCESS", "appid": "wx2421b1c4370ec43b",
            "mch_id": "10000100", "transaction_id": "1008450740201411110005820873", "out_trade_no": "ORD1",
            "out_refund_no": "R1", "refund_id": "2008450740201411110000174436", "refund_fee": "300",
            "total_fee": "880", "cash_fee": "880"}


def test_an_accepted_refund_is_processing() -> None:
    state = refunds.accepted(ACCEPTED, REQUEST)
    assert (state.out_refund_no, state.out_trade_no, state.refund_id, state.amount, state.status,
            state.success_time) == ("R1", "ORD1", "2008450740201411110000174436", 300, REFUND_PROCESSING, None)


@pytest.mark.parametrize("answer", [
    {**ACCEPTED, "out_refund_no": "R2"}, {**ACCEPTED, "refund_id": ""}, {**ACCEPTED, "refund_fee": "3.00"}])
def test_an_accepted_refund_that_does_not_add_up_is_retryable(answer: dict[str, str]) -> None:
    with pytest.raises(WxPayBadResponse):
        refunds.accepted(answer, REQUEST)


def queried(status: str, **extra: str) -> dict[str, str]:
    # A trade with two refunds, ours second: the answer is searched, not read at _0.
    return {"out_trade_no": "ORD1", "refund_count": "2",
            "out_refund_no_0": "R0", "refund_id_0": "50000000000000000000000000000", "refund_fee_0": "100",
            "refund_status_0": "SUCCESS", "refund_success_time_0": "2024-01-01 11:00:00",
            "out_refund_no_1": "R1", "refund_id_1": "50000000000000000000000000001", "refund_fee_1": "300",
            "refund_status_1": status, **extra}


@pytest.mark.parametrize("status, ours", [
    ("SUCCESS", REFUND_SUCCESS), ("PROCESSING", REFUND_PROCESSING), ("REFUNDCLOSE", REFUND_CLOSED),
    ("CHANGE", REFUND_ABNORMAL)])
def test_refundquery_states_map_to_ours(status: str, ours: str) -> None:
    state = refunds.queried(queried(status, refund_success_time_1="2024-01-01 12:00:05"), "R1")
    assert (state.refund_id, state.amount, state.status) == ("50000000000000000000000000001", 300, ours)
    assert state.success_time == (1704081605.0 if ours == REFUND_SUCCESS else None)


@pytest.mark.parametrize("answer", [
    queried("SUCCESS"),  # no refund_success_time_1
    queried("MAYBE"),
    {**queried("PROCESSING"), "refund_count": "1"},  # ours is not listed
    {**queried("PROCESSING"), "refund_fee_1": "-3"},
    {k: v for k, v in queried("PROCESSING").items() if k != "refund_count"},
])
def test_a_refundquery_answer_that_does_not_add_up_is_retryable(answer: dict[str, str]) -> None:
    with pytest.raises(WxPayBadResponse):
        refunds.queried(answer, "R1")


@pytest.mark.parametrize("code, kind", [
    ("NOTENOUGH", RefundRefused), ("TRADE_STATE_ERROR", RefundRefused), ("ERROR", RefundRefused),
    ("INVALID_TRANSACTIONID", RefundRefused), ("PARAM_ERROR", RefundRefused), ("TRADE_OVERDUE", RefundRefused),
    ("USER_ACCOUNT_ABNORMAL", RefundRefused), ("SYSTEMERROR", GatewayUnavailable),
    ("BIZERR_NEED_RETRY", GatewayUnavailable), ("FREQUENCY_LIMITED", GatewayUnavailable),
    ("REFUNDNOTEXIST", RefundNotFound),
])
def test_refund_err_codes_map_per_the_spec(code: str, kind: type[Exception]) -> None:
    error = v2_error(code, "x", {"err_code": code}, refund=True)
    assert isinstance(error, kind) and isinstance(error, WxPayError) and error.err_code == code
    assert error.retryable == (kind is GatewayUnavailable)


def test_other_calls_keep_their_meaning_for_the_same_words() -> None:
    assert not isinstance(v2_error("PARAM_ERROR", "x", {}), RefundRefused)
    assert isinstance(v2_error("ORDERNOTEXIST", "x", {}), TradeNotFound)
    assert isinstance(v2_error("ORDERNOTEXIST", "x", {}, refund=True), RefundRefused)


# -- mutual TLS ---------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool = False,
           ip: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    merchant_cert: Path
    merchant_key: Path
    stranger_cert: Path  # signed by another CA
    stranger_key: Path


def _write(path: Path, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return path.with_suffix(".crt"), path.with_suffix(".key")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("ca", "other", "server", "merchant", "stranger")}
    ca = _issue("test CA", keys["ca"], "test CA", keys["ca"], ca=True)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server = _write(tmp_path / "server", _issue("127.0.0.1", keys["server"], "test CA", keys["ca"], ip="127.0.0.1"),
                    keys["server"])
    merchant = _write(tmp_path / "merchant", _issue("1900000109", keys["merchant"], "test CA", keys["ca"]),
                      keys["merchant"])
    stranger = _write(tmp_path / "stranger", _issue("1900000109", keys["stranger"], "other CA", keys["other"]),
                      keys["stranger"])
    return Pki(tmp_path / "ca.pem", *server, *merchant, *stranger)


@dataclass
class Endpoint:
    base: str
    presented: list[str]  # the client certificate CN of each request that got through


@pytest.fixture
def endpoint(io_loop, pki: Pki) -> Iterator[Endpoint]:  # type: ignore[no-untyped-def]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(pki.server_cert, pki.server_key)
    presented: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            peer = writer.get_extra_info("peercert") or {}
            presented.append(next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), ""))
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # a handshake the endpoint refused
        finally:
            writer.close()

    async def start() -> asyncio.Server:
        return await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)

    server = io_loop.run_sync(start)
    yield Endpoint(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", presented)
    server.close()


def _gateway(session: aiohttp.ClientSession, base: str, tls: Any) -> WxPayV2Gateway:
    merchant = Merchant("wx2421b1c4370ec43b", "1900000109", "192006250b4c09247ec02edce69f6a2d")
    return WxPayV2Gateway(WxPayClient(session, base, merchant, timeout=5.0, tls=tls))


@pytest.mark.gen_test(timeout=30)
async def test_the_refund_call_presents_the_merchant_certificate(endpoint: Endpoint, pki: Pki) -> None:
    async with aiohttp.ClientSession() as session:
        gateway = _gateway(session, endpoint.base, client_tls(str(pki.merchant_cert), str(pki.merchant_key),
                                                              str(pki.ca)))
        with pytest.raises(WxPayUnreachable, match="HTTP 503"):
            await gateway.refund(REQUEST)
        with pytest.raises(WxPayUnreachable, match="HTTP 503"):
            await gateway.query_refund("R1")
    assert endpoint.presented == ["1900000109", "1900000109"]


@pytest.mark.gen_test(timeout=30)
async def test_without_a_certificate_the_refund_is_not_sent(endpoint: Endpoint, pki: Pki) -> None:
    async with aiohttp.ClientSession() as session:
        for tls in (None, client_tls(ca_path=str(pki.ca))):
            with pytest.raises(WxPayError, match="WXPAY_CERT_PATH") as caught:
                await _gateway(session, endpoint.base, tls).refund(REQUEST)
            assert not caught.value.retryable
        # Other calls go out and the endpoint refuses the handshake.
        with pytest.raises(WxPayUnreachable):
            await _gateway(session, endpoint.base, client_tls(ca_path=str(pki.ca))).query("ORD1")
    assert endpoint.presented == []


@pytest.mark.gen_test(timeout=30)
async def test_a_certificate_from_another_ca_or_a_server_we_do_not_trust_gets_nowhere(endpoint: Endpoint,
                                                                                   pki: Pki) -> None:
    async with aiohttp.ClientSession() as session:
        stranger = client_tls(str(pki.stranger_cert), str(pki.stranger_key), str(pki.ca))
        with pytest.raises(WxPayUnreachable):
            await _gateway(session, endpoint.base, stranger).refund(REQUEST)
        system_cas = client_tls(str(pki.merchant_cert), str(pki.merchant_key))  # the test CA is not among them
        with pytest.raises(WxPayUnreachable, match=r"(?i)certificate"):
            await _gateway(session, endpoint.base, system_cas).refund(REQUEST)
    assert endpoint.presented == []


def test_unusable_tls_material_is_a_clear_error(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TLSSetupError, match="go together"):
        client_tls(str(pki.merchant_cert), "")
    with pytest.raises(TLSSetupError, match="WXPAY_CA_PATH"):
        client_tls(ca_path=str(tmp_path / "missing.pem"))
    with pytest.raises(TLSSetupError, match="WXPAY_CERT_PATH"):
        client_tls(str(pki.merchant_cert), str(pki.stranger_key))  # a key that is not the certificate's


def _settings(tmp_path: Path, **env: str) -> settings_mod.Settings:
    return settings_mod.from_environ({"VAR_DIR": str(tmp_path / "var"), "SANDBOX": "1", **env})


@pytest.mark.gen_test(timeout=30)
async def test_the_composition_wires_the_settings_into_the_v2_client(endpoint: Endpoint, pki: Pki,
                                                                    tmp_path: Path) -> None:
    settings = _settings(tmp_path, WXPAY_API_BASE=endpoint.base, WXPAY_CERT_PATH=str(pki.merchant_cert),
                         WXPAY_PRIVATE_KEY_PATH=str(pki.merchant_key), WXPAY_CA_PATH=str(pki.ca))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(WxPayUnreachable, match="HTTP 503"):
            await build_gateway(settings, session).gateway.refund(REQUEST)
    assert endpoint.presented == ["1900000109"]


def test_the_composition_refuses_to_start_with_tls_material_it_cannot_load(pki: Pki, tmp_path: Path) -> None:
    settings = _settings(tmp_path, WXPAY_API_BASE="https://127.0.0.1:9", WXPAY_CA_PATH=str(tmp_path / "no.pem"))
    with pytest.raises(settings_mod.ConfigError, match="WXPAY_CA_PATH"):
        build_gateway(settings, None)  # type: ignore[arg-type]  # fails before any call
