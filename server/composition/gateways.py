"""Which WeChat Pay API this process talks to, built from the settings: the
only place that knows there are two. Everything past here sees a
``PaymentGateway``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from server.gateway.abc import PaymentGateway
from server.gateway.wxpay_v2.client import Merchant, WxPayClient
from server.gateway.wxpay_v2.gateway import WxPayV2Gateway
from server.gateway.wxpay_v2.tls import ClientTLS, TLSSetupError, client_tls
from server.gateway.wxpay_v3 import crypto
from server.gateway.wxpay_v3.client import WxPayV3Client
from server.gateway.wxpay_v3.gateway import WxPayV3Gateway
from server.gateway.wxpay_v3.verifier import MIN_FETCH_INTERVAL, Verifier
from server.simulator.v3_keys import CERTIFICATE_MODE, V3Keys, generate_sandbox_keys
from settings import ConfigError, Settings

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    gateway: PaymentGateway
    # What the sandbox simulator plays WeChat's v3 side with (None: v2, or not sandbox).
    simulator_v3: V3Keys | None = None
    # Runs for the life of the process (v3 platform certificates kept fresh).
    background: Callable[[], Coroutine[Any, Any, None]] | None = None
    # Reads v2 notifies: late ones for orders placed before a switch to v3
    # still arrive at /wxpay/notify, and are believed while the v2 key is set.
    v2_notices: PaymentGateway | None = None


def build_gateway(settings: Settings, http: aiohttp.ClientSession) -> Gateway:
    if settings.wxpay_api == "v3":
        # The v3 key material is checked first: its errors say which file is
        # wrong, where loading the TLS pair could only say "mismatch".
        built = _v3(settings, http)
        built.v2_notices = _v2(settings, http, _tls(settings)) if settings.wxpay_key else None
        return built
    tls = _tls(settings)
    if tls is not None and not tls.presents_certificate:
        log.warning("WXPAY_CERT_PATH/WXPAY_PRIVATE_KEY_PATH unset: refunds over %s will be refused "
                    "(secapi/pay/refund needs the merchant certificate)", settings.wxpay_api_base)
    v2 = _v2(settings, http, tls)
    return Gateway(v2, v2_notices=v2)


def _v2(settings: Settings, http: aiohttp.ClientSession, tls: ClientTLS | None) -> WxPayV2Gateway:
    merchant = Merchant(settings.wxpay_appid, settings.wxpay_mch_id, settings.wxpay_key, settings.wxpay_sign_type)
    return WxPayV2Gateway(WxPayClient(http, settings.wxpay_api_base, merchant, tls=tls))


def _tls(settings: Settings) -> ClientTLS | None:
    """Over https: the CAs the API base is checked against and, when configured,
    the merchant certificate (v2 refunds are mutual TLS); plain http needs none."""
    if not settings.wxpay_api_base.lower().startswith("https:"):
        return None
    cert, key = settings.wxpay_cert_path, settings.wxpay_private_key_path
    if settings.wxpay_api == "v3" and (settings.sandbox or not cert):
        # v3 needs no client certificate: its key signs requests, and in v3
        # sandbox mode both are generated later, for that alone.
        cert = key = ""
    try:
        return client_tls(cert, key, settings.wxpay_ca_path)
    except TLSSetupError as exc:
        raise ConfigError(str(exc)) from None


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting} {path!r} cannot be read ({exc.strerror}): point it at the file") from None


def _v3(settings: Settings, http: aiohttp.ClientSession) -> Gateway:
    simulator_v3 = None
    certificates_dir = settings.var_dir / "wxpay_v3_certificates"
    if settings.sandbox:
        # The simulator's keys and the merchant's, made once under VAR_DIR. The
        # client is given both ways to verify (public key and certificates), so
        # the simulator can play either, and WeChat's migration between them.
        files = generate_sandbox_keys(settings.var_dir / "wxpay_v3", apiv3_key=settings.wxpay_apiv3_key)
        simulator_v3 = files.v3_keys(settings.wxpay_mch_id, settings.wxpay_appid, CERTIFICATE_MODE)
        private_key_pem = files.merchant_private_key.read_bytes()
        serial = files.merchant_serial
        cert_pem: bytes | None = files.merchant_certificate.read_bytes()
        public_key_id: str | None = files.public_key_id
        public_key_pem: bytes | None = files.public_key.read_bytes()
    else:
        private_key_pem = _read(settings.wxpay_private_key_path, "WXPAY_PRIVATE_KEY_PATH")
        serial = settings.wxpay_cert_serial
        cert_pem = _read(settings.wxpay_cert_path, "WXPAY_CERT_PATH") if settings.wxpay_cert_path else None
        public_key_id = settings.wxpay_public_key_id or None
        public_key_pem = (_read(settings.wxpay_public_key_path, "WXPAY_PUBLIC_KEY_PATH")
                          if settings.wxpay_public_key_path else None)
    try:
        private_key = crypto.load_private_key(private_key_pem, "WXPAY_PRIVATE_KEY_PATH")
        if cert_pem is not None:
            cert = crypto.load_certificate(cert_pem, "WXPAY_CERT_PATH")
            crypto.check_serial_matches(private_key, cert)
            if crypto.serial_key(crypto.certificate_serial(cert)) != crypto.serial_key(serial):
                raise crypto.CredentialError(
                    f"WXPAY_CERT_SERIAL {serial} is not the serial of WXPAY_CERT_PATH "
                    f"({crypto.certificate_serial(cert)}): set the certificate's serial")
        public_key = crypto.load_public_key(public_key_pem, "WXPAY_PUBLIC_KEY_PATH") if public_key_pem else None
        # Platform certificates are always accepted besides a public key: a
        # merchant moving to the public key keeps the certificates it had, so
        # no notify fails in between; a new merchant simply has none.
        # One certificate fetch a minute at most from WeChat; the sandbox's
        # simulator is local and rotates on demand, so it is asked at once.
        verifier = Verifier(public_key_id=public_key_id if public_key else None, public_key=public_key,
                            certificates_dir=certificates_dir,
                            min_fetch_interval=0.0 if settings.sandbox else MIN_FETCH_INTERVAL)
    except crypto.CredentialError as exc:
        raise ConfigError(str(exc)) from None
    tls = _tls(settings)
    client = WxPayV3Client(http, settings.wxpay_api_base, settings.wxpay_mch_id, settings.wxpay_appid, serial,
                           private_key, settings.wxpay_apiv3_key, verifier,
                           tls=tls.context if tls is not None else None)
    # Without a public key, certificates are all there is: keep them fresh.
    background = verifier.keep_fresh if public_key is None else None
    return Gateway(WxPayV3Gateway(client), simulator_v3, background)
