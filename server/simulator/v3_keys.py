"""The v3 simulator's key material (its crypto is in v3_crypto.py).

Deliberately independent of ``server.gateway.wxpay_v3``: the simulator stands
in for WeChat, and a bug shared by the merchant client and the "WeChat" it talks
to would pass every round trip. Everything below RSA and AES-GCM is the
``cryptography`` package's.

Two ways WeChat lets a merchant verify its answers, both played here:

- platform-certificate mode: answers signed with a platform certificate's key,
  ``Wechatpay-Serial`` = the certificate's serial (hex), the certificates
  listed (encrypted with the APIv3 key) at ``/v3/certificates``; during a
  rotation two are listed and the newer one signs;
- public-key mode (merchants since late 2024): answers signed with the
  "WeChat Pay public key"'s private half, ``Wechatpay-Serial`` =
  ``PUB_KEY_ID_...``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from server.simulator.v3_crypto import (
    cert_serial,
    certificate_pem,
    load_certificate,
    load_private_key,
    new_private_key,
    private_key_pem,
    public_key_pem,
    rsa_public_key,
    self_signed_certificate,
    sign,
)

log = logging.getLogger(__name__)

PUBLIC_KEY_MODE = "public_key"
CERTIFICATE_MODE = "certificate"
MODES = (PUBLIC_KEY_MODE, CERTIFICATE_MODE)
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
APIV3_KEY_ALPHABET = string.ascii_letters + string.digits

# File names under the sandbox key directory (the first two as WeChat's
# certificate tool names them for the merchant).
MERCHANT_KEY = "apiclient_key.pem"
MERCHANT_CERT = "apiclient_cert.pem"
PLATFORM_KEY = "wechatpay_platform_key.pem"
PLATFORM_CERT = "wechatpay_platform_cert.pem"
PUB_KEY = "pub_key.pem"
PUB_KEY_PRIVATE = "pub_key_private.pem"
PUB_KEY_ID_FILE = "pub_key_id.txt"
APIV3_KEY_FILE = "apiv3_key.txt"


# -- the parties' keys -----------------------------------------------------------

@dataclass(frozen=True)
class PlatformSigner:
    """One key WeChat signs with: a platform certificate's, or the public key's."""

    serial: str  # Wechatpay-Serial: certificate serial (hex) or PUB_KEY_ID_...
    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate | None = None  # None for the WeChat Pay public key

    def sign(self, message: str) -> str:
        return sign(self.private_key, message)


@dataclass
class V3Keys:
    """What the v3 simulator knows: the merchant's identity and public keys, its
    own signing keys, the APIv3 key.

    ``merchant_keys`` maps the merchant's certificate serial (upper-case hex) to
    its public key; ``certificates`` are the platform certificates listed at
    ``/v3/certificates`` (oldest first; the last one signs in certificate mode);
    ``public_key`` is the public-key-mode signer; ``mode`` says which signs now.
    """

    mchid: str
    appid: str
    apiv3_key: bytes
    merchant_keys: dict[str, rsa.RSAPublicKey]
    certificates: list[PlatformSigner] = field(default_factory=list)
    public_key: PlatformSigner | None = None
    mode: str = CERTIFICATE_MODE

    def __post_init__(self) -> None:
        if len(self.apiv3_key) != 32:
            raise ValueError("the APIv3 key must be 32 bytes")
        self.merchant_keys = {serial.upper(): key for serial, key in self.merchant_keys.items()}
        self.set_mode(self.mode)

    @property
    def signer(self) -> PlatformSigner:
        """Who signs answers and notifies now."""
        if self.mode == PUBLIC_KEY_MODE:
            assert self.public_key is not None  # set_mode refuses the mode without one
            return self.public_key
        return self.certificates[-1]

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if mode == PUBLIC_KEY_MODE and self.public_key is None:
            raise ValueError("public-key mode needs a WeChat Pay public key")
        if mode == CERTIFICATE_MODE and not self.certificates:
            raise ValueError("certificate mode needs a platform certificate")
        self.mode = mode

    def rotate(self, keep: int = 2) -> PlatformSigner:
        """WeChat's certificate rotation: a new platform certificate signs from now
        on, while the previous one stays listed (``keep`` certificates in all)."""
        newest = new_platform_certificate()
        self.certificates = [*self.certificates, newest][-keep:]
        log.info("simulator: platform certificate rotated to %s", newest.serial)
        return newest

    def merchant_key(self, serial: str) -> rsa.RSAPublicKey | None:
        return self.merchant_keys.get(serial.upper())


def new_platform_certificate(*, not_before: dt.datetime | None = None) -> PlatformSigner:
    key = new_private_key()
    cert = self_signed_certificate(key, "Tenpay.com Root CA simulated platform", not_before=not_before)
    return PlatformSigner(cert_serial(cert), key, cert)


def new_public_key_signer() -> PlatformSigner:
    return PlatformSigner("PUB_KEY_ID_" + secrets.token_hex(15).upper(), new_private_key())


def new_apiv3_key() -> str:
    return "".join(secrets.choice(APIV3_KEY_ALPHABET) for _ in range(32))


# -- sandbox key files -------------------------------------------------------------

@dataclass(frozen=True)
class SandboxKeyFiles:
    """Where the sandbox keys are, and the values the merchant's settings need.

    Merchant side (the client's settings): ``merchant_private_key`` (WXPAY_PRIVATE_KEY_PATH),
    ``merchant_serial`` (WXPAY_CERT_SERIAL), ``apiv3_key`` (WXPAY_APIV3_KEY),
    ``public_key`` + ``public_key_id`` (WXPAY_PUBLIC_KEY_PATH, WXPAY_PUBLIC_KEY_ID).
    WeChat side (the simulator's only): the platform key and certificate, the
    public key's private half.
    """

    directory: Path
    merchant_private_key: Path
    merchant_certificate: Path
    merchant_serial: str
    platform_private_key: Path
    platform_certificate: Path
    platform_serial: str
    public_key: Path
    public_key_private: Path
    public_key_id: str
    apiv3_key_file: Path
    apiv3_key: str

    def v3_keys(self, mchid: str, appid: str, mode: str = CERTIFICATE_MODE) -> V3Keys:
        """The simulator's view of these files."""
        merchant_cert = load_certificate(self.merchant_certificate)
        platform_cert = load_certificate(self.platform_certificate)
        return V3Keys(
            mchid=mchid, appid=appid, apiv3_key=self.apiv3_key.encode(),
            merchant_keys={cert_serial(merchant_cert): rsa_public_key(merchant_cert)},
            certificates=[PlatformSigner(cert_serial(platform_cert), load_private_key(self.platform_private_key),
                                         platform_cert)],
            public_key=PlatformSigner(self.public_key_id, load_private_key(self.public_key_private)),
            mode=mode)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only; never overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_and_cert(directory: Path, key_name: str, cert_name: str, common_name: str) -> str:
    key_path, cert_path = directory / key_name, directory / cert_name
    if not (key_path.exists() and cert_path.exists()):
        key = new_private_key()
        cert = self_signed_certificate(key, common_name)
        key_path.unlink(missing_ok=True)
        cert_path.unlink(missing_ok=True)
        _write_new(key_path, private_key_pem(key))
        _write_new(cert_path, certificate_pem(cert))
        log.info("simulator: generated %s and %s (serial %s)", key_name, cert_name, cert_serial(cert))
    cert = load_certificate(cert_path)
    if rsa_public_key(cert).public_numbers() != load_private_key(key_path).public_key().public_numbers():
        raise ValueError(f"{cert_path} is not the certificate of {key_path}")
    return cert_serial(cert)


def generate_sandbox_keys(directory: Path | str, apiv3_key: str | None = None) -> SandboxKeyFiles:
    """The sandbox's v3 keys under ``directory`` (0600 files), made once and
    reused: the merchant's key + certificate, the platform's key + certificate,
    the WeChat Pay public key (+ its private half and PUB_KEY_ID), and the APIv3
    key unless the caller has one already (settings generate it with the other
    VAR_DIR secrets)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    merchant_serial = _key_and_cert(d, MERCHANT_KEY, MERCHANT_CERT, "paypush sandbox merchant")
    platform_serial = _key_and_cert(d, PLATFORM_KEY, PLATFORM_CERT, "paypush sandbox WeChat Pay platform")
    pub, pub_private, pub_id = d / PUB_KEY, d / PUB_KEY_PRIVATE, d / PUB_KEY_ID_FILE
    if not (pub.exists() and pub_private.exists() and pub_id.exists()):
        signer = new_public_key_signer()
        for p in (pub, pub_private, pub_id):
            p.unlink(missing_ok=True)
        _write_new(pub_private, private_key_pem(signer.private_key))
        _write_new(pub, public_key_pem(signer.private_key.public_key()))
        _write_new(pub_id, signer.serial.encode())
        log.info("simulator: generated the WeChat Pay public key %s", signer.serial)
    apiv3 = d / APIV3_KEY_FILE
    if apiv3_key is None:
        if not apiv3.exists():
            _write_new(apiv3, new_apiv3_key().encode())
        apiv3_key = apiv3.read_text().strip()
    if len(apiv3_key.encode()) != 32:
        raise ValueError("the APIv3 key must be 32 bytes")
    return SandboxKeyFiles(
        directory=d, merchant_private_key=d / MERCHANT_KEY, merchant_certificate=d / MERCHANT_CERT,
        merchant_serial=merchant_serial, platform_private_key=d / PLATFORM_KEY,
        platform_certificate=d / PLATFORM_CERT, platform_serial=platform_serial, public_key=pub,
        public_key_private=pub_private, public_key_id=pub_id.read_text().strip(),
        apiv3_key_file=apiv3, apiv3_key=apiv3_key)
