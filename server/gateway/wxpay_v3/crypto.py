"""WeChat Pay API v3 cryptography: request signatures, answer/notify
verification and AEAD_AES_256_GCM resource decryption.

Every primitive is the ``cryptography`` package's; this module only builds the
strings WeChat signs and says clearly what failed to load:

- a request is signed over ``METHOD\\nURL\\ntimestamp\\nnonce\\nbody\\n`` (URL is
  the path with its query, exactly as sent) with SHA256withRSA, PKCS#1 v1.5,
  under the merchant's private key; the ``Authorization`` header names the
  merchant, the nonce, the timestamp and the serial of the merchant certificate;
- an answer or a notify is signed over ``timestamp\\nnonce\\nbody\\n`` (the raw
  body bytes, never a re-serialised one) under the platform's key, named by
  ``Wechatpay-Serial`` (a platform certificate serial or a ``PUB_KEY_ID_...``);
- a notify's ``resource`` (and each ``/v3/certificates`` entry) is AES-GCM under
  the 32-byte APIv3 key, with the 12-character nonce and the associated data
  given beside the ciphertext (which ends with the 16-byte tag).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
APIV3_KEY_LENGTH = 32
# WeChat probes a notify URL with a deliberately wrong signature starting so;
# its docs ask the merchant to refuse it like any other bad signature.
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
_NONCE_ALPHABET = string.ascii_uppercase + string.digits
_HEX_DIGITS = frozenset("0123456789ABCDEF")


class CredentialError(ValueError):
    """A key, certificate or APIv3 key that cannot be used, and why (never its content)."""


class DecryptError(ValueError):
    """A resource that does not decrypt: wrong APIv3 key, tampered, or malformed."""


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


# -- loading -------------------------------------------------------------------

def load_private_key(pem: str | bytes, what: str = "merchant private key") -> rsa.RSAPrivateKey:
    """The merchant's RSA private key (apiclient_key.pem, PKCS#8 or PKCS#1 PEM, unencrypted)."""
    try:
        key = serialization.load_pem_private_key(_as_bytes(pem), password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialError(f"{what} does not load as an unencrypted PEM private key "
                              f"({type(exc).__name__})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CredentialError(f"{what} is a {type(key).__name__}, WeChat Pay v3 needs an RSA key")
    return key


def load_public_key(pem: str | bytes, what: str = "WeChat Pay public key") -> rsa.RSAPublicKey:
    """WeChat Pay's public key (pub_key.pem, ``-----BEGIN PUBLIC KEY-----``)."""
    try:
        key = serialization.load_pem_public_key(_as_bytes(pem))
    except (ValueError, TypeError) as exc:
        raise CredentialError(f"{what} does not load as a PEM public key ({type(exc).__name__})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CredentialError(f"{what} is a {type(key).__name__}, WeChat Pay v3 signs with RSA")
    return key


def load_certificate(pem: str | bytes, what: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_as_bytes(pem))
    except ValueError as exc:
        raise CredentialError(f"{what} does not load as a PEM X.509 certificate ({exc})") from None


def certificate_serial(cert: x509.Certificate) -> str:
    """The serial as WeChat writes it: upper-case hex of the serial's bytes."""
    n = cert.serial_number
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big").hex().upper()


def serial_key(serial: str) -> str:
    """A serial in one form for comparing: a certificate serial is a number
    (``0A1B`` and ``a1b`` are the same), a ``PUB_KEY_ID_...`` is a name."""
    text = serial.strip().upper()
    if text and all(c in _HEX_DIGITS for c in text):
        return text.lstrip("0") or "0"
    return text


def certificate_public_key(cert: x509.Certificate, what: str = "certificate") -> rsa.RSAPublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CredentialError(f"{what} holds a {type(key).__name__}, WeChat Pay v3 signs with RSA")
    return key


def check_serial_matches(private_key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
    """Refuse a merchant certificate that is not the private key's."""
    held = certificate_public_key(cert, "merchant certificate").public_numbers()
    if held != private_key.public_key().public_numbers():
        raise CredentialError(f"merchant certificate {certificate_serial(cert)} is not the merchant private key's")


def apiv3_key(key: str | bytes) -> bytes:
    """The APIv3 key as bytes, refused unless it is the 32 bytes WeChat issues."""
    raw = _as_bytes(key)
    if len(raw) != APIV3_KEY_LENGTH:
        raise CredentialError(f"the APIv3 key must be {APIV3_KEY_LENGTH} bytes, got {len(raw)}")
    return raw


# -- signatures ----------------------------------------------------------------

def nonce_str() -> str:
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(32))


def sign(private_key: rsa.RSAPrivateKey, message: bytes) -> str:
    """SHA256withRSA (PKCS#1 v1.5) of ``message``, base64."""
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def request_message(method: str, url: str, timestamp: str | int, nonce: str, body: str | bytes) -> bytes:
    return f"{method.upper()}\n{url}\n{timestamp}\n{nonce}\n".encode() + _as_bytes(body) + b"\n"


def response_message(timestamp: str | int, nonce: str, body: str | bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + _as_bytes(body) + b"\n"


def sign_request(private_key: rsa.RSAPrivateKey, method: str, url: str, timestamp: str | int,
                 nonce: str, body: str | bytes) -> str:
    """The signature of one request; ``url`` is the path with its query, as sent."""
    return sign(private_key, request_message(method, url, timestamp, nonce, body))


def authorization(mchid: str, serial: str, private_key: rsa.RSAPrivateKey, method: str, url: str,
                  body: str | bytes, *, timestamp: int | None = None, nonce: str | None = None) -> str:
    """The ``Authorization`` header for one request."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or nonce_str()
    signature = sign_request(private_key, method, url, ts, nonce, body)
    return (f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{ts}",serial_no="{serial}"')


def verify(public_key: rsa.RSAPublicKey, timestamp: str, nonce: str, body: str | bytes, signature_b64: str) -> bool:
    """Whether ``signature_b64`` is the platform's over ``timestamp\\nnonce\\nbody\\n``."""
    if not signature_b64 or signature_b64.startswith(SIGNTEST_PREFIX):
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        public_key.verify(signature, response_message(timestamp, nonce, body), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


# -- resources -----------------------------------------------------------------

def decrypt_resource(apiv3_key: bytes, nonce: str, associated_data: str, ciphertext_b64: str) -> bytes:
    """The plaintext of an AEAD_AES_256_GCM ``resource`` (or ``encrypt_certificate``).

    The key length is AES's business (16, 24 or 32 bytes); :func:`apiv3_key`
    is where a configured key is held to WeChat's 32.
    """
    try:
        ciphertext = base64.b64decode(ciphertext_b64, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptError("ciphertext is not base64") from None
    try:
        aes = AESGCM(apiv3_key)
    except ValueError as exc:
        raise DecryptError(f"unusable key: {exc}") from None
    try:
        return aes.decrypt(_as_bytes(nonce), ciphertext, _as_bytes(associated_data or ""))
    except (InvalidTag, ValueError):
        raise DecryptError("does not decrypt with this APIv3 key (wrong key, or tampered)") from None
