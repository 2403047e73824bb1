"""A stand-in for WeChat Pay's v3 API, for the client's protocol tests only.

It exercises status codes, error JSON, certificate download and rotation over
real HTTP. It vouches for no crypto: its signing is wechatpayv3's
(``utils.rsa_sign``) and its checks and encryption are written here against
``cryptography`` directly, never server.gateway.wxpay_v3's -- the golden vectors
and wechatpayv3 in tests/test_wxpay_v3_crypto.py are what vouch for the crypto.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tornado.web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from wechatpayv3 import utils as peer  # type: ignore[import-untyped]

MCHID = "1230000109"
APPID = "wxd678efh567hg6787"
APIV3_KEY = "0123456789abcdef0123456789ABCDEF"
PUB_KEY_ID = "PUB_KEY_ID_0112300001092024010100000000000000"
_AUTH = re.compile(r'^WECHATPAY2-SHA256-RSA2048 mchid="([^"]*)",nonce_str="([^"]*)",signature="([^"]*)",'
                   r'timestamp="([^"]*)",serial_no="([^"]*)"$')


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate(key: rsa.RSAPrivateKey, serial: int, days: int = 365) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA test")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "X")


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def encrypt(key: str, plaintext: bytes, associated_data: str) -> dict[str, str]:
    nonce = secrets.token_hex(6)
    ct = AESGCM(key.encode()).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {"algorithm": "AEAD_AES_256_GCM", "nonce": nonce, "associated_data": associated_data,
            "ciphertext": base64.b64encode(ct).decode()}


def signed_headers(key: rsa.RSAPrivateKey, serial: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = secrets.token_hex(16).upper()
    return {"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce, "Wechatpay-Serial": serial,
            "Wechatpay-Signature": peer.rsa_sign(key, f"{ts}\n{nonce}\n{body}\n"),
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}


@dataclass
class Keys:
    """Generated once per test session: RSA key generation is the slow part."""

    merchant_key: rsa.RSAPrivateKey
    merchant_cert: x509.Certificate
    platform_key: rsa.RSAPrivateKey          # the public-key mode key
    cert_keys: list[rsa.RSAPrivateKey]       # platform certificate keys: old, new
    certs: list[x509.Certificate]

    @property
    def merchant_serial(self) -> str:
        return serial_of(self.merchant_cert)


_KEYS: list[Keys] = []


def keys() -> Keys:
    if not _KEYS:
        merchant = rsa_key()
        cert_keys = [rsa_key(), rsa_key()]
        _KEYS.append(Keys(merchant, certificate(merchant, 0x5F1C72E2A8931B72A2E13AF8DEE92471EB397115), rsa_key(),
                          cert_keys, [certificate(k, 0x3A0000000000000000000000000000000000000 + i)
                                      for i, k in enumerate(cert_keys)]))
    return _KEYS[0]


@dataclass
class Platform:
    """The stand-in's state and knobs; tests change the knobs between calls."""

    keys: Keys
    mode: str = "public_key"             # or "certificate"
    signing_cert: int = 0                # which platform certificate signs in certificate mode
    listed_certs: list[int] = field(default_factory=lambda: [0])
    apiv3_key: str = APIV3_KEY
    trades: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    certificate_fetches: int = 0
    next_error: tuple[int, str, str] | None = None
    answer_with: Callable[[str, dict[str, str]], tuple[str, dict[str, str]]] | None = None  # (body, headers) -> same

    def sign(self, body: str) -> dict[str, str]:
        if self.mode == "public_key":
            return signed_headers(self.keys.platform_key, PUB_KEY_ID, body)
        return signed_headers(self.keys.cert_keys[self.signing_cert], serial_of(self.keys.certs[self.signing_cert]),
                              body)

    def check_authorization(self, method: str, uri: str, auth: str, body: bytes) -> str | None:
        """Why the request's signature is refused, or None (checked with cryptography, by hand)."""
        m = _AUTH.match(auth or "")
        if not m:
            return f"Authorization {auth[:40]!r} is not WECHATPAY2-SHA256-RSA2048"
        mchid, nonce, signature, ts, serial = m.groups()
        if mchid != MCHID or serial != self.keys.merchant_serial:
            return "unknown merchant or serial"
        if abs(time.time() - int(ts)) > 300:
            return "stale request"
        message = f"{method}\n{uri}\n{ts}\n{nonce}\n".encode() + body + b"\n"
        try:
            self.keys.merchant_cert.public_key().verify(  # type: ignore[union-attr, call-arg]
                base64.b64decode(signature), message, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[arg-type]
        except InvalidSignature:
            return "signature does not verify"
        return None


class _Handler(tornado.web.RequestHandler):
    def initialize(self, platform: Platform) -> None:
        self.platform = platform

    def answer(self, status: int, payload: dict[str, Any] | None = None) -> None:
        body = "" if payload is None else json.dumps(payload, ensure_ascii=False)
        headers = self.platform.sign(body)
        if self.platform.answer_with is not None:
            body, headers = self.platform.answer_with(body, headers)
        self.set_status(status)
        for k, v in headers.items():
            self.set_header(k, v)
        if body:
            self.set_header("Content-Type", "application/json")
            self.write(body.encode())
        self.finish()

    def prepare(self) -> None:
        p = self.platform
        p.requests.append({"method": self.request.method, "uri": self.request.uri,
                           "headers": dict(self.request.headers), "body": self.request.body})
        why = p.check_authorization(self.request.method or "", self.request.uri or "",
                                    self.request.headers.get("Authorization", ""), self.request.body)
        if why:
            self.answer(401, {"code": "SIGN_ERROR", "message": why})
        elif p.next_error is not None:
            status, code, message = p.next_error
            p.next_error = None
            self.answer(status, {"code": code, "message": message})


class Native(_Handler):
    def post(self) -> None:
        order = json.loads(self.request.body)
        no = order["out_trade_no"]
        trade = self.platform.trades.setdefault(no, {"order": order, "trade_state": "NOTPAY"})
        if trade["trade_state"] == "SUCCESS":
            return self.answer(403, {"code": "ORDERPAID", "message": "该订单已支付"})
        self.answer(200, {"code_url": f"weixin://wxpay/bizpayurl/up?pr={no}"})


class Query(_Handler):
    def get(self, no: str) -> None:
        trade = self.platform.trades.get(no)
        if trade is None or self.get_query_argument("mchid", "") != MCHID:
            return self.answer(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
        order = trade["order"]
        answer = {"appid": order["appid"], "mchid": order["mchid"], "out_trade_no": no,
                  "trade_state": trade["trade_state"], "trade_state_desc": "",
                  "amount": {"total": order["amount"]["total"], "currency": "CNY"}}
        if trade["trade_state"] == "SUCCESS":
            answer.update(transaction_id=trade["transaction_id"], success_time=trade["success_time"],
                          trade_type="NATIVE")
        self.answer(200, answer)


class Close(_Handler):
    def post(self, no: str) -> None:
        trade = self.platform.trades.get(no)
        if trade is None:
            return self.answer(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
        if trade["trade_state"] == "SUCCESS":
            return self.answer(400, {"code": "ORDERPAID", "message": "该订单已支付"})
        trade["trade_state"] = "CLOSED"
        self.answer(204)


class Certificates(_Handler):
    def get(self) -> None:
        p = self.platform
        p.certificate_fetches += 1
        data = []
        for i in p.listed_certs:
            cert = p.keys.certs[i]
            data.append({"serial_no": serial_of(cert),
                         "effective_time": cert.not_valid_before_utc.isoformat(),
                         "expire_time": cert.not_valid_after_utc.isoformat(),
                         "encrypt_certificate": encrypt(p.apiv3_key, pem(cert).encode(), "certificate")})
        self.answer(200, {"data": data})


def application(platform: Platform) -> tornado.web.Application:
    args = {"platform": platform}
    return tornado.web.Application([
        (r"/v3/pay/transactions/native", Native, args),
        (r"/v3/pay/transactions/out-trade-no/([^/?]+)", Query, args),
        (r"/v3/pay/transactions/out-trade-no/([^/?]+)/close", Close, args),
        (r"/v3/certificates", Certificates, args),
    ])


def pay(platform: Platform, no: str, transaction_id: str = "4200000000202401010000000001",
        success_time: str = "2024-01-01T12:00:05+08:00") -> None:
    platform.trades[no].update(trade_state="SUCCESS", transaction_id=transaction_id, success_time=success_time)
