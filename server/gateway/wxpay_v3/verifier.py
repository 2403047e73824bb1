"""Which platform key a ``Wechatpay-Serial`` names, and whether an answer or a
notify was signed with it in the last five minutes.

Two sources, usable together: WeChat moves merchants from platform
certificates to a WeChat Pay public key, and while both are configured a
signature under either is accepted, so the switch fails no notify.

- public-key mode: one key, named ``PUB_KEY_ID_...`` (WXPAY_PUBLIC_KEY_ID);
- certificate mode: the platform certificates ``GET /v3/certificates`` lists
  (decrypted with the APIv3 key by the client, which hands them here), kept as
  ``{serial}.pem`` under a directory so a restart needs no fetch, refreshed
  every ``refresh_interval`` and when a serial we do not know signs something
  (at most one fetch per ``min_fetch_interval``, however many ask). Every
  listed certificate is accepted until it expires: during a rotation WeChat
  lists the old and the new one, and signs with either.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from server.gateway.wxpay_v3 import crypto

log = logging.getLogger(__name__)

TIMESTAMP_WINDOW = 300.0  # seconds either side of now, as WeChat's docs ask
REFRESH_INTERVAL = 12 * 3600.0
MIN_FETCH_INTERVAL = 60.0

Fetcher = Callable[[], Awaitable[list[x509.Certificate]]]
# Set while the fetcher runs: the fetch's own answers must not start another
# fetch (it would wait for the lock the running one holds).
_FETCHING: contextvars.ContextVar[bool] = contextvars.ContextVar("wxpay_v3_fetching", default=False)


class SignatureRejected(Exception):
    """An answer or notify that must not be believed; the message says why."""


class UnknownSerial(SignatureRejected):
    """Signed under a serial we hold no key for (yet: a refresh may bring it)."""

    def __init__(self, serial: str):
        super().__init__(f"no platform key for Wechatpay-Serial {serial[:64]!r}")
        self.serial = serial


@dataclass(frozen=True)
class _Key:
    serial: str  # as WeChat writes it
    key: rsa.RSAPublicKey
    expires: float | None  # epoch seconds; None for the public key, which does not expire


def header(headers: Mapping[str, str], name: str) -> str:
    """A header by name, whatever case the mapping keeps (tornado's and aiohttp's
    are case-insensitive already; a plain dict may not be)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value or ""


class Verifier:
    def __init__(self, *, public_key_id: str | None = None, public_key: rsa.RSAPublicKey | None = None,
                 certificates_dir: Path | str | None = None, clock: Callable[[], float] = time.time,
                 window: float = TIMESTAMP_WINDOW, refresh_interval: float = REFRESH_INTERVAL,
                 min_fetch_interval: float = MIN_FETCH_INTERVAL):
        if (public_key_id is None) != (public_key is None):
            raise crypto.CredentialError("the WeChat Pay public key and its PUB_KEY_ID go together")
        if public_key is None and certificates_dir is None:
            raise crypto.CredentialError("neither a WeChat Pay public key nor platform certificates to verify with")
        self._clock = clock
        self.window = window
        self.refresh_interval = refresh_interval
        self.min_fetch_interval = min_fetch_interval
        self.public_key_id = public_key_id
        self._keys: dict[str, _Key] = {}
        if public_key_id is not None and public_key is not None:
            self._keys[crypto.serial_key(public_key_id)] = _Key(public_key_id, public_key, None)
        self._dir = Path(certificates_dir) if certificates_dir is not None else None
        self._fetcher: Fetcher | None = None
        self._fetch_lock = asyncio.Lock()
        self._last_fetch = float("-inf")
        self._background: set[asyncio.Task[None]] = set()
        if self._dir is not None:
            self._load_cached()

    # -- what we hold -------------------------------------------------------

    @property
    def certificate_mode(self) -> bool:
        return self._dir is not None

    def serials(self) -> list[str]:
        """The serials a signature is accepted under now."""
        now = self._clock()
        return sorted(k.serial for k in self._keys.values() if k.expires is None or k.expires > now)

    def request_serial(self) -> str | None:
        """What to send as ``Wechatpay-Serial`` with a request: the public key's
        id (WeChat refuses requests of public-key merchants without it), else the
        platform certificate that expires last."""
        if self.public_key_id:
            return self.public_key_id
        now = self._clock()
        live = [(k.expires, k.serial) for k in self._keys.values() if k.expires is not None and k.expires > now]
        return max(live)[1] if live else None

    def add_certificates(self, certs: Iterable[x509.Certificate]) -> list[str]:
        """Accept these platform certificates (already decrypted and vouched
        for); keep them on disk; forget expired ones. Returns the new serials."""
        now = self._clock()
        added = []
        for cert in certs:
            serial = crypto.certificate_serial(cert)
            expires = cert.not_valid_after_utc.timestamp()
            if expires <= now:
                log.warning("platform certificate %s expired, not taken", serial)
                continue
            if crypto.serial_key(serial) not in self._keys:
                added.append(serial)
            self._keys[crypto.serial_key(serial)] = _Key(
                serial, crypto.certificate_public_key(cert, f"platform certificate {serial}"), expires)
            self._store(serial, cert)
        self._forget_expired(now)
        if added:
            log.info("platform certificates now %s (new %s)", ",".join(self.serials()), ",".join(added))
        return added

    def _forget_expired(self, now: float) -> None:
        for name, k in list(self._keys.items()):
            if k.expires is not None and k.expires <= now:
                del self._keys[name]
                log.info("platform certificate %s expired, dropped", k.serial)
                if self._dir is not None:
                    (self._dir / f"{k.serial}.pem").unlink(missing_ok=True)

    def _store(self, serial: str, cert: x509.Certificate) -> None:
        if self._dir is None:
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / f"{serial}.pem"
        tmp = path.with_suffix(".pem.tmp")
        tmp.write_bytes(cert.public_bytes(Encoding.PEM))
        os.replace(tmp, path)  # a reader never sees half a certificate

    def _load_cached(self) -> None:
        assert self._dir is not None
        if not self._dir.is_dir():
            return
        certs = []
        for path in sorted(self._dir.glob("*.pem")):
            try:
                certs.append(crypto.load_certificate(path.read_bytes(), str(path)))
            except (crypto.CredentialError, OSError) as exc:
                log.warning("platform certificate cache: %s skipped: %s", path.name, exc)
        self.add_certificates(certs)

    # -- checking -----------------------------------------------------------

    def check(self, headers: Mapping[str, str], body: bytes,
              extra: Mapping[str, rsa.RSAPublicKey] | None = None) -> str:
        """Refuse (SignatureRejected) unless ``body`` is signed, within the
        window, under a key we hold (or one of ``extra``); returns the serial."""
        timestamp = header(headers, "Wechatpay-Timestamp")
        nonce = header(headers, "Wechatpay-Nonce")
        signature = header(headers, "Wechatpay-Signature")
        serial = header(headers, "Wechatpay-Serial")
        if not (timestamp and nonce and signature and serial):
            raise SignatureRejected("unsigned: Wechatpay-Timestamp/-Nonce/-Signature/-Serial missing")
        sign_type = header(headers, "Wechatpay-Signature-Type")
        if sign_type and sign_type != crypto.SCHEMA:
            raise SignatureRejected(f"unsupported Wechatpay-Signature-Type {sign_type[:40]!r}")
        if signature.startswith(crypto.SIGNTEST_PREFIX):
            raise SignatureRejected("signature probe (WECHATPAY/SIGNTEST/) refused, as WeChat asks")
        try:
            at = int(timestamp)
        except ValueError:
            raise SignatureRejected(f"Wechatpay-Timestamp {timestamp[:20]!r} is not epoch seconds") from None
        skew = self._clock() - at
        if abs(skew) > self.window:
            raise SignatureRejected(f"Wechatpay-Timestamp {at} is {skew:+.0f}s from now (window {self.window:.0f}s)")
        extra_keys = {crypto.serial_key(s): k for s, k in (extra or {}).items()}
        key = extra_keys.get(crypto.serial_key(serial)) or self._key(serial)
        if key is None:
            raise UnknownSerial(serial)
        if not crypto.verify(key, timestamp, nonce, body, signature):
            raise SignatureRejected(f"signature does not verify under {serial}")
        return serial

    def _key(self, serial: str) -> rsa.RSAPublicKey | None:
        k = self._keys.get(crypto.serial_key(serial))
        if k is None or (k.expires is not None and k.expires <= self._clock()):
            return None
        return k.key

    async def check_async(self, headers: Mapping[str, str], body: bytes) -> str:
        """:meth:`check`, fetching the platform certificates once (rate limited)
        when the serial is new to us."""
        try:
            return self.check(headers, body)
        except UnknownSerial:
            if not self.certificate_mode or _FETCHING.get():
                raise
            # A concurrent asker's fetch counts too: check again whether this one ran or not.
            await self.refresh(reason="unknown serial")
        return self.check(headers, body)

    # -- fetching -----------------------------------------------------------

    def fetch_with(self, fetcher: Fetcher) -> None:
        """Where platform certificates come from (the client's signed
        ``GET /v3/certificates``); only used in certificate mode."""
        self._fetcher = fetcher

    async def refresh(self, *, reason: str = "", force: bool = False) -> bool:
        """Fetch the platform certificates unless one fetch was made less than
        ``min_fetch_interval`` ago (``force`` for the periodic one). Returns
        whether a fetch ran and succeeded; a failed one is logged, not raised."""
        if self._dir is None or self._fetcher is None:
            return False
        async with self._fetch_lock:  # concurrent askers wait for one fetch, then see it is recent
            if not force and self._clock() - self._last_fetch < self.min_fetch_interval:
                return False
            self._last_fetch = self._clock()
            token = _FETCHING.set(True)
            try:
                certs = await self._fetcher()
            except Exception as exc:  # the certificates we hold keep working; the next fetch may succeed
                log.warning("platform certificates fetch failed (%s): %s", reason or "periodic", exc)
                return False
            finally:
                _FETCHING.reset(token)
            self.add_certificates(certs)
            return True

    def refresh_soon(self, reason: str) -> None:
        """:meth:`refresh` in the background, from code that cannot wait (a
        notify is refused now; WeChat sends it again and the key is there)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._refresh_quietly(reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_quietly(self, reason: str) -> None:
        await self.refresh(reason=reason)

    async def keep_fresh(self) -> None:
        """Run until cancelled: fetch now, then every ``refresh_interval``.
        The composition starts it as a task in certificate mode."""
        while True:
            await self.refresh(reason="periodic", force=True)
            await asyncio.sleep(self.refresh_interval)
