"""The v3 Verifier: which key a Wechatpay-Serial names, the five-minute window,
both modes at once (WeChat's migration), rotation, expiry, the certificate
cache directory and the rate-limited refresh on an unknown serial.

The signed material is the wechatpay-go SDK's own notify (headers, raw body,
certificate; see tests/support/wxpay_v3_vectors.py), so a pass here means our
Verifier accepts what WeChat's SDK accepted, not what our own code signed.
Its platform certificate, the Go SDK's other platform certificate and its
PEM public key all hold the same RSA key, so one signature serves every mode.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from server.gateway.wxpay_v3 import crypto
from server.gateway.wxpay_v3.verifier import SignatureRejected, UnknownSerial, Verifier
from tests.support import wxpay_v3_vectors as v
from tests.support.waiting import eventually

PUB_KEY_ID = "PUB_KEY_ID_0112345678202401010000000000000000"
NOTIFY_CERT = crypto.load_certificate(v.GO_NOTIFY_CERTIFICATE)       # D7CE59D1F522D701
OTHER_CERT = crypto.load_certificate(v.GO_PLATFORM_CERTIFICATE)      # F5765756002FDD77, same key
EXPIRED_CERT = crypto.load_certificate(v.JAVA_MERCHANT_CERTIFICATE)  # until 2025-05-09
SIGNATURE_KEY = crypto.load_public_key(v.GO_PUBLIC_KEY)


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def signed_under(serial: str) -> dict[str, str]:
    return {**v.GO_NOTIFY_HEADERS, "Wechatpay-Serial": serial}


def test_the_go_sdk_notify_verifies_under_its_certificate(tmp_path: Path) -> None:
    verifier = Verifier(certificates_dir=tmp_path, clock=Clock(v.GO_NOTIFY_NOW))
    verifier.add_certificates([NOTIFY_CERT])
    assert verifier.check(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY) == v.GO_NOTIFY_SERIAL


def test_lower_case_headers_and_a_lower_case_serial_are_the_same(tmp_path: Path) -> None:
    verifier = Verifier(certificates_dir=tmp_path, clock=Clock(v.GO_NOTIFY_NOW))
    verifier.add_certificates([NOTIFY_CERT])
    lowered = {k.lower(): val for k, val in v.GO_NOTIFY_HEADERS.items()}
    lowered["wechatpay-serial"] = v.GO_NOTIFY_SERIAL.lower()
    assert verifier.check(lowered, v.GO_NOTIFY_BODY)


@pytest.mark.parametrize("offset, accepted", [(-300, True), (300, True), (-301, False), (301, False), (86400, False)])
def test_the_timestamp_must_be_within_five_minutes(tmp_path: Path, offset: int, accepted: bool) -> None:
    verifier = Verifier(certificates_dir=tmp_path, clock=Clock(v.GO_NOTIFY_NOW + offset))
    verifier.add_certificates([NOTIFY_CERT])
    if accepted:
        verifier.check(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY)
    else:
        with pytest.raises(SignatureRejected, match="Wechatpay-Timestamp 1624523846 is"):
            verifier.check(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY)


def test_public_key_mode_takes_the_pub_key_id_and_nothing_else() -> None:
    verifier = Verifier(public_key_id=PUB_KEY_ID, public_key=SIGNATURE_KEY, clock=Clock(v.GO_NOTIFY_NOW))
    assert verifier.check(signed_under(PUB_KEY_ID), v.GO_NOTIFY_BODY) == PUB_KEY_ID
    with pytest.raises(UnknownSerial):  # the same key, but under a serial this merchant was not given
        verifier.check(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY)
    assert verifier.request_serial() == PUB_KEY_ID


def test_during_the_migration_both_the_certificate_and_the_public_key_are_accepted(tmp_path: Path) -> None:
    verifier = Verifier(public_key_id=PUB_KEY_ID, public_key=SIGNATURE_KEY, certificates_dir=tmp_path,
                        clock=Clock(v.GO_NOTIFY_NOW))
    verifier.add_certificates([NOTIFY_CERT])
    assert verifier.check(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY) == v.GO_NOTIFY_SERIAL
    assert verifier.check(signed_under(PUB_KEY_ID), v.GO_NOTIFY_BODY) == PUB_KEY_ID
    assert verifier.request_serial() == PUB_KEY_ID  # the public key is where the merchant is going


def test_during_a_rotation_every_listed_certificate_is_accepted(tmp_path: Path) -> None:
    verifier = Verifier(certificates_dir=tmp_path, clock=Clock(v.GO_NOTIFY_NOW))
    verifier.add_certificates([NOTIFY_CERT, OTHER_CERT])
    assert verifier.check(signed_under(v.GO_NOTIFY_SERIAL), v.GO_NOTIFY_BODY) == v.GO_NOTIFY_SERIAL
    assert verifier.check(signed_under(v.GO_PLATFORM_SERIAL), v.GO_NOTIFY_BODY) == v.GO_PLATFORM_SERIAL
    assert verifier.serials() == sorted([v.GO_NOTIFY_SERIAL, v.GO_PLATFORM_SERIAL])


def test_a_bad_signature_or_body_is_refused_with_the_reason(tmp_path: Path) -> None:
    verifier = Verifier(certificates_dir=tmp_path, clock=Clock(v.GO_NOTIFY_NOW))
    verifier.add_certificates([NOTIFY_CERT])
    with pytest.raises(SignatureRejected, match="does not verify under D7CE59D1F522D701"):
        verifier.check(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY + b" ")
    probe = {**v.GO_NOTIFY_HEADERS, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + "A" * 40}
    with pytest.raises(SignatureRejected, match="SIGNTEST"):
        verifier.check(probe, v.GO_NOTIFY_BODY)
    unsigned = {k: val for k, val in v.GO_NOTIFY_HEADERS.items() if k != "Wechatpay-Signature"}
    with pytest.raises(SignatureRejected, match="unsigned"):
        verifier.check(unsigned, v.GO_NOTIFY_BODY)
    with pytest.raises(SignatureRejected, match="Signature-Type"):
        verifier.check({**v.GO_NOTIFY_HEADERS, "Wechatpay-Signature-Type": "WECHATPAY2-SM2-WITH-SM3"},
                       v.GO_NOTIFY_BODY)


def test_certificates_are_kept_on_disk_for_the_next_start(tmp_path: Path) -> None:
    first = Verifier(certificates_dir=tmp_path / "certs", clock=Clock(v.GO_NOTIFY_NOW))
    first.add_certificates([NOTIFY_CERT])
    assert (tmp_path / "certs" / f"{v.GO_NOTIFY_SERIAL}.pem").is_file()
    (tmp_path / "certs" / "junk.pem").write_text("not a certificate")
    again = Verifier(certificates_dir=tmp_path / "certs", clock=Clock(v.GO_NOTIFY_NOW))
    assert again.check(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY) == v.GO_NOTIFY_SERIAL


def test_an_expired_certificate_is_dropped_and_never_taken(tmp_path: Path) -> None:
    expired_at = EXPIRED_CERT.not_valid_after_utc.timestamp()
    clock = Clock(expired_at - 3600)
    verifier = Verifier(certificates_dir=tmp_path, clock=clock)
    verifier.add_certificates([EXPIRED_CERT, NOTIFY_CERT])
    assert verifier.serials() == sorted([v.JAVA_MERCHANT_SERIAL, v.GO_NOTIFY_SERIAL])
    clock.now = expired_at + 1
    assert verifier.serials() == [v.GO_NOTIFY_SERIAL]
    verifier.add_certificates([])  # every refresh forgets what expired, on disk too
    assert not (tmp_path / f"{v.JAVA_MERCHANT_SERIAL}.pem").exists()
    assert (tmp_path / f"{v.GO_NOTIFY_SERIAL}.pem").exists()
    late = Verifier(certificates_dir=tmp_path / "other", clock=clock)
    assert late.add_certificates([EXPIRED_CERT]) == [] and late.serials() == []


def test_expired_is_expired_even_before_a_refresh(tmp_path: Path) -> None:
    clock = Clock(v.GO_NOTIFY_NOW)
    verifier = Verifier(certificates_dir=tmp_path, clock=clock, window=10**10)
    verifier.add_certificates([NOTIFY_CERT])
    clock.now = NOTIFY_CERT.not_valid_after_utc.timestamp() + 1
    with pytest.raises(UnknownSerial):
        verifier.check(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY)


class Platform:
    """What GET /v3/certificates would hand over, counted."""

    def __init__(self, certs: list[x509.Certificate], fail: bool = False):
        self.certs = certs
        self.fail = fail
        self.fetches = 0

    async def __call__(self) -> list[x509.Certificate]:
        self.fetches += 1
        await asyncio.sleep(0)  # let concurrent askers pile up on the lock
        if self.fail:
            raise OSError("platform unreachable")
        return self.certs


def test_an_unknown_serial_fetches_once_then_verifies(tmp_path: Path) -> None:
    clock = Clock(v.GO_NOTIFY_NOW)
    verifier = Verifier(certificates_dir=tmp_path, clock=clock)
    platform = Platform([NOTIFY_CERT])
    verifier.fetch_with(platform)

    async def go() -> list[str]:
        return await asyncio.gather(*(verifier.check_async(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY)
                                      for _ in range(5)))

    assert asyncio.run(go()) == [v.GO_NOTIFY_SERIAL] * 5
    assert platform.fetches == 1


def test_unknown_serials_fetch_at_most_once_a_minute(tmp_path: Path) -> None:
    clock = Clock(v.GO_NOTIFY_NOW)
    verifier = Verifier(certificates_dir=tmp_path, clock=clock, window=10**6)
    platform = Platform([])  # the platform does not list the serial: a forger's, or not yet propagated
    verifier.fetch_with(platform)

    async def ask() -> None:
        with pytest.raises(UnknownSerial):
            await verifier.check_async(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY)

    asyncio.run(ask())
    clock.now += 59
    asyncio.run(ask())
    assert platform.fetches == 1
    clock.now += 2
    platform.certs = [NOTIFY_CERT]
    assert asyncio.run(verifier.check_async(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY)) == v.GO_NOTIFY_SERIAL
    assert platform.fetches == 2


def test_a_failed_fetch_keeps_the_certificates_we_have(tmp_path: Path) -> None:
    clock = Clock(v.GO_NOTIFY_NOW)
    verifier = Verifier(certificates_dir=tmp_path, clock=clock)
    verifier.add_certificates([OTHER_CERT])
    verifier.fetch_with(Platform([], fail=True))
    assert asyncio.run(verifier.refresh(force=True)) is False
    assert verifier.check(signed_under(v.GO_PLATFORM_SERIAL), v.GO_NOTIFY_BODY) == v.GO_PLATFORM_SERIAL


def test_public_key_mode_never_fetches() -> None:
    verifier = Verifier(public_key_id=PUB_KEY_ID, public_key=SIGNATURE_KEY, clock=Clock(v.GO_NOTIFY_NOW))
    platform = Platform([NOTIFY_CERT])
    verifier.fetch_with(platform)
    with pytest.raises(UnknownSerial):
        asyncio.run(verifier.check_async(v.GO_NOTIFY_HEADERS, v.GO_NOTIFY_BODY))
    assert platform.fetches == 0


def test_the_periodic_refresh_is_not_rate_limited_and_picks_up_a_new_certificate(tmp_path: Path) -> None:
    clock = Clock(v.GO_NOTIFY_NOW)
    verifier = Verifier(certificates_dir=tmp_path, clock=clock, refresh_interval=0.01)
    platform = Platform([OTHER_CERT])
    verifier.fetch_with(platform)

    async def run_until_rotated() -> None:
        task = asyncio.create_task(verifier.keep_fresh())
        try:
            await eventually(lambda: v.GO_PLATFORM_SERIAL in verifier.serials(), message="first fetch taken",
                             every=0.005)
            platform.certs = [OTHER_CERT, NOTIFY_CERT]
            await eventually(lambda: v.GO_NOTIFY_SERIAL in verifier.serials(), message="rotated certificate taken",
                             every=0.005)
        finally:
            task.cancel()

    asyncio.run(run_until_rotated())
    assert platform.fetches >= 2


def test_misconfigurations_are_refused() -> None:
    with pytest.raises(crypto.CredentialError, match="go together"):
        Verifier(public_key_id=PUB_KEY_ID)
    with pytest.raises(crypto.CredentialError, match="neither"):
        Verifier()


def test_the_request_serial_in_certificate_mode_is_the_longest_lived(tmp_path: Path) -> None:
    verifier = Verifier(certificates_dir=tmp_path, clock=Clock(v.GO_NOTIFY_NOW))
    assert verifier.request_serial() is None
    verifier.add_certificates([NOTIFY_CERT, OTHER_CERT])
    longest = max((NOTIFY_CERT, OTHER_CERT), key=lambda c: c.not_valid_after_utc)
    assert verifier.request_serial() == crypto.certificate_serial(longest)
    assert longest.not_valid_after_utc > dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
